"""The two halves of a secure round's segments (layouts: :mod:`analysis.secure_layout`).

Each ``site_*`` function turns a site's aggregate into segment values (a site then encodes them
with :meth:`analysis.fixedpoint.Layout.encode`); each ``pooled_*`` function turns the decoded
totals into the payload the estimators of :mod:`analysis.kinds` read, as if one site had
answered with the pooled data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis import cox, km
from analysis.kinds.base import Query
from analysis.logrank import logrank_sums
from analysis.secure_layout import (
    FloatArray,
    ModelShape,
    SecureState,
    StateMismatch,
    pack,
    unpack,
)

# ---------------------------------------------------------------------------------------------
# Site half: a site's aggregates as segment values
# ---------------------------------------------------------------------------------------------


def _position(levels: Sequence[str], value: str, variable: str) -> int:
    try:
        return list(levels).index(value)
    except ValueError:
        raise StateMismatch(
            f"the round's level set of {variable!r} omits this site's level {value!r}"
        ) from None


def site_summary(query: Query, aggregate: Mapping[str, Any], state: SecureState) -> dict[str, Any]:
    """Table 1 segments from :func:`analysis.summary.summary_aggregate` output."""
    by = query.by[0]
    arms, sexes, params = state.levels_of(by), state.levels.get("SEX", ()), state.params
    out = {
        name: np.zeros(size)
        for name, size in (
            ("n", len(arms)),
            ("age_n", len(arms)),
            ("age", 2 * len(arms)),
            ("sex", len(arms) * len(sexes)),
            ("events", len(arms) * len(params)),
            ("censored", len(arms) * len(params)),
        )
    }
    for arm, item in aggregate["arms"].items():
        a = _position(arms, arm, by)
        out["n"][a], out["age_n"][a] = item["n"], item["age_n"]
        out["age"][2 * a : 2 * a + 2] = item["age_sum"], item["age_sumsq"]
        for level, count in item["sex"].items():
            out["sex"][a * len(sexes) + _position(sexes, level, "SEX")] = count
        for cell in ("events", "censored"):
            for param, count in item[cell].items():
                out[cell][a * len(params) + _position(params, param, "PARAMCD")] = count
    return {f"{query.id}/{k}": v for k, v in out.items()}


def site_tables(
    query: Query, tables: Mapping[tuple[str, ...], km.EventTable], state: SecureState
) -> dict[str, Any]:
    """Event and censoring counts per (group key, grid time)."""
    keys = state.keys(query.by)
    size = state.grid.size
    events = np.zeros(len(keys) * size)
    censored = np.zeros(len(keys) * size)
    index = {key: i for i, key in enumerate(keys)}
    for key, table in tables.items():
        if key not in index:
            raise StateMismatch(f"the round's level sets omit this site's group {key!r}")
        at = index[key] * size + state.grid.index(table.time)
        np.add.at(events, at, table.n_event)
        np.add.at(censored, at, table.n_censored)
    return {f"{query.id}/events": events, f"{query.id}/censored": censored}


def site_stratum_sums(
    query: Query, tables: Mapping[tuple[str, ...], km.EventTable], state: SecureState
) -> dict[str, Any]:
    """Log-rank ``O``, ``E``, ``V`` and group sizes over this site's strata."""
    groups = state.levels_of(query.by[0])
    keyed = {(key[0], tuple(key[1:])): table for key, table in tables.items()}
    for group, _ in keyed:
        _position(groups, group, query.by[0])
    observed, expected, variance = logrank_sums(keyed, groups)
    sizes = np.zeros(len(groups))
    for (group, _), table in keyed.items():
        sizes[groups.index(group)] += table.n
    q = query.id
    return {
        f"{q}/n": sizes,
        f"{q}/observed": np.rint(observed),
        f"{q}/expected": expected,
        f"{q}/variance": variance,
    }


def site_derivatives(shape: ModelShape, derivs: cox.CoxDerivatives) -> dict[str, Any]:
    """A site-stratified model's segments."""
    m = shape.definition.id
    gross = derivs.gross if derivs.gross is not None else np.zeros(len(shape.terms))
    return {
        f"{m}/loglik": [derivs.loglik],
        f"{m}/gradient": derivs.gradient,
        f"{m}/information": pack(derivs.information),
        f"{m}/gross": gross,
        f"{m}/n": [derivs.n],
        f"{m}/events": [derivs.events],
    }


def site_moments(
    shape: ModelShape, moments: cox.RiskSetMoments, xsum: FloatArray
) -> dict[str, Any]:
    """A shared-baseline model's segments (moments on every stratum key's full grid)."""
    if moments.keys != shape.keys:
        raise ValueError("the moments were not computed on the round's stratum keys")
    m = shape.definition.id
    return {
        f"{m}/r0": moments.r0,
        f"{m}/r1": moments.r1,
        f"{m}/r2": pack(moments.r2),
        f"{m}/d": moments.d,
        f"{m}/dx": moments.dx,
        f"{m}/e0": moments.e0,
        f"{m}/e1": moments.e1,
        f"{m}/e2": pack(moments.e2),
        f"{m}/eta": [moments.eta_events],
        f"{m}/n": [moments.n],
        f"{m}/events": [moments.events],
        f"{m}/xsum": xsum,
    }


# ---------------------------------------------------------------------------------------------
# Coordinator half: decoded totals as the payloads the estimators read
# ---------------------------------------------------------------------------------------------


def pooled_summary(
    query: Query, totals: Mapping[str, NDArray[Any]], state: SecureState
) -> dict[str, Any]:
    """The pooled Table 1 aggregate (groups and cells nobody is in left out, as in a sum of
    the sites' own aggregates)."""
    q = query.id
    arms, sexes, params = state.levels_of(query.by[0]), state.levels.get("SEX", ()), state.params
    out: dict[str, Any] = {}
    for a, arm in enumerate(arms):
        events = totals[f"{q}/events"][a * len(params) : (a + 1) * len(params)]
        censored = totals[f"{q}/censored"][a * len(params) : (a + 1) * len(params)]
        n = int(totals[f"{q}/n"][a])
        if n == 0 and not (events.any() or censored.any()):
            continue
        sex = totals[f"{q}/sex"][a * len(sexes) : (a + 1) * len(sexes)]
        out[arm] = {
            "n": n,
            "age_n": int(totals[f"{q}/age_n"][a]),
            "age_sum": float(totals[f"{q}/age"][2 * a]),
            "age_sumsq": float(totals[f"{q}/age"][2 * a + 1]),
            "sex": {s: int(c) for s, c in zip(sexes, sex, strict=True) if c > 0},
            "events": {
                p: int(e) for p, e, c in zip(params, events, censored, strict=True) if e + c
            },
            "censored": {
                p: int(c) for p, e, c in zip(params, events, censored, strict=True) if e + c
            },
        }
    return {"arms": out}


def pooled_tables(
    query: Query, totals: Mapping[str, NDArray[Any]], state: SecureState
) -> list[dict[str, Any]]:
    """Pooled event tables (the rows of a site's event-table answer), groups with rows only."""
    size = state.grid.size
    times = state.grid.times
    events = totals[f"{query.id}/events"].reshape(-1, size)
    censored = totals[f"{query.id}/censored"].reshape(-1, size)
    rows = []
    for i, key in enumerate(state.keys(query.by)):
        at = (events[i] > 0) | (censored[i] > 0)
        if at.any():
            rows.append(
                {
                    "key": list(key),
                    "time": times[at],
                    "n_event": events[i][at].astype(np.int64),
                    "n_censored": censored[i][at].astype(np.int64),
                }
            )
    return rows


def pooled_stratum_sums(
    query: Query, totals: Mapping[str, NDArray[Any]], state: SecureState
) -> dict[str, Any]:
    """Pooled log-rank sums over the groups that have subjects."""
    q = query.id
    groups = state.levels_of(query.by[0])
    k = len(groups)
    keep = np.flatnonzero(totals[f"{q}/n"] > 0)
    variance = totals[f"{q}/variance"].reshape(k, k)
    return {
        "groups": [groups[i] for i in keep],
        "observed": totals[f"{q}/observed"][keep].astype(np.float64),
        "expected": totals[f"{q}/expected"][keep],
        "variance": variance[np.ix_(keep, keep)],
        "n": totals[f"{q}/n"][keep],
    }


def pooled_derivatives(shape: ModelShape, totals: Mapping[str, NDArray[Any]]) -> cox.CoxDerivatives:
    """The summed derivatives of a model (a shared baseline's from its summed moments)."""
    m, p = shape.definition.id, len(shape.terms)
    if shape.definition.mode == "stratified":
        return cox.CoxDerivatives(
            loglik=float(totals[f"{m}/loglik"][0]),
            gradient=totals[f"{m}/gradient"],
            information=unpack(totals[f"{m}/information"], p)[0],
            n=int(totals[f"{m}/n"][0]),
            events=int(totals[f"{m}/events"][0]),
            gross=totals[f"{m}/gross"],
        )
    return cox.derivatives_from_moments(pooled_moments(shape, totals), shape.spec.ties)


def pooled_moments(shape: ModelShape, totals: Mapping[str, NDArray[Any]]) -> cox.RiskSetMoments:
    """The summed risk-set moments of a shared-baseline model."""
    m, p = shape.definition.id, len(shape.terms)
    t = totals[f"{m}/r0"].size
    size = t // max(len(shape.keys), 1)
    grid = np.arange(size, dtype=np.float64)  # the times themselves are not used by the sums
    return cox.RiskSetMoments(
        keys=shape.keys,
        offsets=np.arange(len(shape.keys) + 1, dtype=np.int64) * size,
        time=np.tile(grid, len(shape.keys)),
        r0=totals[f"{m}/r0"],
        r1=totals[f"{m}/r1"].reshape(t, p),
        r2=unpack(totals[f"{m}/r2"], p),
        d=totals[f"{m}/d"].astype(np.int64),
        dx=totals[f"{m}/dx"].reshape(t, p),
        e0=totals[f"{m}/e0"],
        e1=totals[f"{m}/e1"].reshape(t, p),
        e2=unpack(totals[f"{m}/e2"], p),
        eta_events=float(totals[f"{m}/eta"][0]),
        n=int(totals[f"{m}/n"][0]),
        events=int(totals[f"{m}/events"][0]),
    )


def pooled_center(shape: ModelShape, totals: Mapping[str, NDArray[Any]]) -> FloatArray:
    """The pooled column means of a shared-baseline model (its next rounds' shift)."""
    m = shape.definition.id
    n = int(totals[f"{m}/n"][0])
    xsum = np.asarray(totals[f"{m}/xsum"], dtype=np.float64)
    return xsum / n if n else np.zeros_like(xsum)
