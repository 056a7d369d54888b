"""Parsed bundles, endpoint data and Cox designs kept in memory between a site's answers.

A simulation worker serves many virtual sites and several rounds, a deployed site several rounds
of a run: each bundle is parsed (or read from the on-disk cache, :mod:`sites.cache`) once, and what
is derived from it (endpoint rows, a model's rows, its prepared design) is kept with it.
"""

from __future__ import annotations

import contextlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from analysis import cox, km
from analysis.base import format_level
from analysis.data import SurvivalData
from analysis.disclosure import release_map
from analysis.errors import UserError
from analysis.kinds.cox_model import CoxModelDef
from sites.bundle import SiteBundle
from sites.cache import load_cached

# Parsed bundles and endpoint data, per process: a simulation worker serves many virtual sites
# (1,000 sites on 2 workers: 500 each) and answers several rounds, so parsing once per bundle
# matters. Keyed by the files' mtimes and sizes so an edited bundle is reloaded. The least
# recently used bundles (and what was derived from them) are dropped beyond MAX_CACHED_ROWS
# table rows or MAX_CACHED_BUNDLES bundles; the bundle in use is always kept.
# Values keep their bundle alive (and are checked against it), so a recycled id() never
# returns another bundle's rows.
MAX_CACHED_BUNDLES = 4096
MAX_CACHED_ROWS = 20_000_000
_BUNDLES: dict[str, tuple[tuple[tuple[str, float, int], ...], SiteBundle]] = {}
_DATA: dict[tuple[int, str], tuple[SiteBundle, SurvivalData]] = {}
_MODEL_DATA: dict[tuple[int, str, str], tuple[SiteBundle, SurvivalData]] = {}
_DESIGNS: dict[tuple[Any, ...], tuple[SiteBundle, cox.CoxDesign]] = {}
_FITS: dict[int, tuple[cox.CoxDesign, cox.LocalFit]] = {}


def cached_bundle(path: Path) -> SiteBundle:
    """Load a bundle once per process; reload it when a file in it changed."""
    folder = Path(path).resolve()
    try:
        stamp = tuple(
            sorted(
                (p.name, p.stat().st_mtime, p.stat().st_size)
                for p in folder.iterdir()
                if not p.name.startswith(".")  # e.g. the .trialfed-cache folder
            )
        )
    except OSError:
        stamp = ()
    key = str(folder)
    cached = _BUNDLES.pop(key, None)
    if cached is not None and cached[0] == stamp:
        _BUNDLES[key] = cached  # now the most recently used
        return cached[1]
    if cached is not None:
        _forget(cached[1])
    bundle = load_cached(folder)
    _BUNDLES[key] = (stamp, bundle)
    while len(_BUNDLES) > 1 and (
        len(_BUNDLES) > MAX_CACHED_BUNDLES or _cached_rows() > MAX_CACHED_ROWS
    ):
        _forget(_BUNDLES.pop(next(iter(_BUNDLES)))[1])
    return bundle


def _cached_rows() -> int:
    return sum(len(b.adsl) + len(b.adtte) for _, b in _BUNDLES.values())


def _forget(bundle: SiteBundle) -> None:
    """Drop what was derived from ``bundle`` (endpoint data, model rows, designs)."""
    for derived in (_DATA, _MODEL_DATA, _DESIGNS):
        for key in [k for k, (owner, _) in derived.items() if owner is bundle]:
            del derived[key]


def prefetch(path: Path) -> None:
    """Load, validate and join a bundle into this process's caches ahead of its first query.

    Bad data is not reported here (the query that needs it reports it and is audited).
    """
    with contextlib.suppress(UserError):
        bundle = cached_bundle(path)
        for param in bundle.params():
            survival_data(bundle, param)


def survival_data(bundle: SiteBundle, param: str) -> SurvivalData:
    """The endpoint's rows joined to ADSL (once per bundle and endpoint)."""
    key = (id(bundle), param)
    cached = _DATA.get(key)
    if cached is None or cached[0] is not bundle:
        cached = _DATA[key] = (bundle, bundle.survival_data(param))
    return cached[1]


def model_data(bundle: SiteBundle, model: CoxModelDef) -> SurvivalData:
    """The rows a model uses at this site (its country's rows for a per-country model)."""
    filters = model.filter
    key = (id(bundle), model.param, json.dumps(filters, sort_keys=True))
    cached = _MODEL_DATA.get(key)
    if cached is not None and cached[0] is bundle:
        return cached[1]
    data = survival_data(bundle, model.param)
    for var, value in filters.items():
        column = data.column(var)
        data = data.subset(np.asarray([format_level(v) == value for v in column], dtype=bool))
    _MODEL_DATA[key] = (bundle, data)
    return data


class TimeMap(Protocol):
    """Moves each row's time (:class:`ReleasedTimes`; the secure grid, :mod:`sites.secure`)."""

    key: Any

    def times(self, data: SurvivalData) -> NDArray[np.float64]:
        """The rows' moved times (same order as ``data``)."""
        ...


def design(
    bundle: SiteBundle, model: CoxModelDef, spec: cox.CoxSpec, released: TimeMap | None
) -> cox.CoxDesign:
    """The model's rows prepared once (design built, sorted) and reused in every round.

    ``released`` maps each row's time to the time its site released it at (the small-cell rules'
    coarsened times) or is None for the exact times.
    """
    key = (
        id(bundle),
        model.param,
        json.dumps(model.filter, sort_keys=True),
        spec.covariates,
        tuple(sorted(spec.levels.items())),
        spec.interactions,
        spec.strata,
        spec.ties,
        None if released is None else released.key,
    )
    cached = _DESIGNS.get(key)
    if cached is not None and cached[0] is bundle:
        return cached[1]
    data = model_data(bundle, model)
    if released is not None:
        data = SurvivalData(released.times(data), data.event, data.covariates)
    prepared = cox.prepare(data, spec)
    _DESIGNS[key] = (bundle, prepared)
    return prepared


def own_fit(design: cox.CoxDesign, spec: cox.CoxSpec) -> cox.LocalFit:
    """The site's own fit of a prepared model (an anchor of the coefficients it evaluates)."""
    cached = _FITS.get(id(design))
    if cached is None or cached[0] is not design:
        cached = _FITS[id(design)] = (design, cox.local_fit(design, spec))
        while len(_FITS) > MAX_CACHED_BUNDLES:
            _FITS.pop(next(iter(_FITS)))
    return cached[1]


def data_version(bundle: SiteBundle) -> str:
    """Names, sizes and modification times of the bundle's files (changes with the data)."""
    parts = []
    for path in sorted(str(p) for p in bundle.files.values()):
        try:
            stat = Path(path).stat()
            parts.append(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{Path(path).name}:missing")
    return ";".join(parts)


class ReleasedTimes:
    """Each row's release time under the small-cell rules, per stratum of a model.

    ``tables`` maps a stratum key to the event table the site released for it (its exact
    table) and ``k``; rows of a stratum move to the release time of their own time.
    """

    def __init__(self, strata: tuple[str, ...], k: int) -> None:
        self.strata = strata
        self.k = k
        self.key = (strata, k)

    def times(self, data: SurvivalData) -> NDArray[np.float64]:
        """The rows' released times (same order as ``data``)."""
        out = np.array(data.time, dtype=np.float64)
        keys, codes = km.group_codes(data, self.strata)
        for g in range(len(keys)):
            rows = codes == g
            table = km.event_table(data.time[rows], data.event[rows])
            exact, event_at, censor_at = release_map(table, self.k)
            where = np.searchsorted(exact, data.time[rows])
            out[rows] = np.where(data.event[rows], event_at[where], censor_at[where])
        return out


def site_info(bundle: SiteBundle) -> dict[str, Any]:
    """Site identity and size; event counts only where they are 0 or at least k."""
    k = bundle.rules.min_cell_count
    params = {}
    for param in bundle.params():
        data = survival_data(bundle, param)
        events = data.n_events
        params[param] = {
            "n": data.n,
            "events": events if events == 0 or events >= k else None,
            **endpoint_labels(bundle, param),
        }
    return {
        "id": bundle.site_id,
        "name": bundle.name,
        "country": bundle.country,
        "n": int(len(bundle.adsl)),
        "params": params,
        "policy": bundle.rules.public(),
        "data_cutoff": data_cutoff(bundle),
        "version": trialfed_version(),
    }


def trialfed_version() -> str:
    """The site's installed trialfed (the coordinator's status view shows it)."""
    try:
        return metadata.version("trialfed")
    except metadata.PackageNotFoundError:
        return "unknown"


def endpoint_labels(bundle: SiteBundle, param: str) -> dict[str, str]:
    """The endpoint's ADaM label (PARAM) and, where the bundle has it, its unit (AVALU)."""
    rows = bundle.adtte[bundle.adtte["PARAMCD"].to_numpy() == param]
    out = {}
    for column, key in (("PARAM", "label"), ("AVALU", "unit")):
        if column in rows and len(rows):
            value = str(rows[column].iloc[0])
            if value:
                out[key] = value
    return out


SAS_EPOCH = np.datetime64("1960-01-01")


def data_cutoff(bundle: SiteBundle) -> str | None:
    """The data cut-off as an ISO date: ADSL ``DCUTDT`` (a study-level date), else the last
    ADTTE ``ADT`` (with the disclosure rules on, only its month: the day of the last event or
    censoring is one subject's). SAS dates count days from 1960-01-01."""
    for table, column in ((bundle.adsl, "DCUTDT"), (bundle.adtte, "ADT")):
        if column in table and table[column].dtype.kind in "fi":
            days = table[column].to_numpy(dtype=np.float64)
            days = days[np.isfinite(days)]
            if days.size:
                date = SAS_EPOCH + np.timedelta64(int(days.max()), "D")
                if column == "ADT" and bundle.rules.min_cell_count > 0:
                    return str(date.astype("datetime64[M]"))  # YYYY-MM
                return str(date)
    return None
