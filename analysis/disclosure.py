"""Small-cell rules as pure functions: what a site may release when no set of fewer than k
subjects may be singled out (k = the site's ``min_cell_count``; 0 turns every rule off).

- :func:`coarsen_table`: an event table whose released counts are 0 or at least k, by moving
  events to every k-th event's time and censorings to every k-th censoring's time (times are
  never invented: each release time is a time of the site's own rows); see
  :func:`release_indices` for the remainders.
- :func:`release_map`: each row's release time, so the Cox moments a site computes on its
  coarsened times change only where its released table changes.
- :func:`suppress_cells`: counts of one partition (e.g. sex levels of one group) with cells
  below k suppressed, and more cells suppressed until the suppressed total is at least k and no
  single suppressed cell can be recovered from the released total.
- :func:`too_fine`: a grouping variable whose levels are mostly unique or mostly hold fewer than k
  subjects (an identifier, a date, free text) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from analysis.km import EventTable

FloatArray = NDArray[np.float64]


def _points(counts: NDArray[np.int64], k: int) -> list[int]:
    """Indices where the running count of one kind reaches k (then restarts)."""
    points, running = [], 0
    for i, count in enumerate(counts.tolist()):
        running += count
        if running >= k:
            points.append(i)
            running = 0
    return points


def _assign(counts: NDArray[np.int64], points: list[int], fallback: int) -> NDArray[np.intp]:
    """For each time index, the index its rows of one kind are released at.

    Rows up to a point go to that point; rows after the last point go to the last point (the
    remainder, fewer than k, joins the last release), or to ``fallback`` when there is none.
    """
    index = np.arange(counts.size)
    if not points:
        return np.full(counts.size, fallback, dtype=np.intp)
    at = np.asarray(points, dtype=np.intp)
    which = np.minimum(np.searchsorted(at, index), at.size - 1)
    return at[which]


def release_indices(table: EventTable, k: int) -> tuple[NDArray[np.intp], NDArray[np.intp]] | None:
    """Where the events and the censorings of each time of ``table`` are released.

    Events are released at every time where k more events have accrued since the last event
    release, censorings likewise at every k-th censoring: each released count is 0 or at least
    k. A remainder of fewer than k joins the last release of its kind; when a kind has no
    release at all (fewer than k in the whole table), its rows are released at the first release
    of the other kind, where their count is the table's size minus the other kind's released
    total (which the released counts already tell). None when neither kind reaches k (the whole
    table is withheld).
    """
    n = table.time.size
    if k <= 1:
        every = np.arange(n, dtype=np.intp)
        return every, every
    event_points = _points(table.n_event, k)
    censor_points = _points(table.n_censored, k)
    if not event_points and not censor_points:
        return None if table.n else (np.empty(0, np.intp), np.empty(0, np.intp))
    # a kind with no release of its own goes to the other kind's first release, where the risk
    # set is largest: a few events placed late, where few remain at risk, would distort the
    # curve most
    return (
        _assign(table.n_event, event_points, (censor_points or event_points)[0]),
        _assign(table.n_censored, censor_points, (event_points or censor_points)[0]),
    )


def release_map(table: EventTable, k: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(times, event_release, censor_release)``: per time of ``table``, the times its events
    and its censorings are released at. Raises ValueError when nothing can be released."""
    found = release_indices(table, k)
    if found is None:
        raise ValueError("the table cannot be released under min_cell_count")
    events, censored = found
    return table.time, table.time[events], table.time[censored]


def coarsen_table(table: EventTable, k: int) -> EventTable | None:
    """The table as released under ``k`` (None when it cannot be released at all).

    The totals of rows, events and censorings are unchanged; only their times move, to times of
    the table itself.
    """
    if k <= 1 or table.time.size == 0:
        return table
    found = release_indices(table, k)
    if found is None:
        return None
    events_at, censored_at = found
    n_event = np.bincount(events_at, weights=table.n_event, minlength=table.time.size)
    n_censored = np.bincount(censored_at, weights=table.n_censored, minlength=table.time.size)
    keep = (n_event > 0) | (n_censored > 0)
    return EventTable(
        time=table.time[keep],
        n_event=np.rint(n_event[keep]).astype(np.int64),
        n_censored=np.rint(n_censored[keep]).astype(np.int64),
    )


def suppress_cells(counts: Mapping[str, int], k: int) -> tuple[dict[str, int], list[str]]:
    """Counts of one partition with small cells withheld.

    Parameters
    ----------
    counts : mapping of str to int
        The cells of one partition (their total is released elsewhere, e.g. a group's N).
    k : int
        Minimum cell count; 0 or 1 releases everything.

    Returns
    -------
    released : dict
        The cells that may leave.
    suppressed : list of str
        The cells withheld: every cell from 1 to k - 1, then (complementary suppression) the
        smallest other cells until at least two are withheld and they add up to k or more, so
        the total minus the released cells recovers no single cell.
    """
    if k <= 1:
        return dict(counts), []
    hidden = [c for c, n in counts.items() if 0 < n < k]
    if hidden:
        others = sorted((n, c) for c, n in counts.items() if c not in hidden and n > 0)
        while others and (len(hidden) < 2 or sum(counts[c] for c in hidden) < k):
            hidden.append(others.pop(0)[1])
    return {c: n for c, n in counts.items() if c not in hidden}, sorted(hidden)


def too_fine(counts: NDArray[np.int64], k: int) -> str:
    """Why a grouping variable with these level sizes is refused ("" when it is not).

    Refused when more than half the subjects are alone in their level (an identifier, a date or
    free text) or, with ``k`` > 1, when most levels hold fewer than ``k`` subjects.
    """
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts > 0]
    n = int(counts.sum())
    if n == 0:
        return ""
    singletons = int(counts[counts == 1].sum())
    if counts.size > 1 and 2 * singletons > n:
        return f"{counts.size} levels for {n} subjects, {singletons} of them alone in their level"
    if k > 1 and 2 * int((counts < k).sum()) > counts.size:
        small = int((counts < k).sum())
        return f"{small} of its {counts.size} levels hold fewer than {k} subjects"
    return ""
