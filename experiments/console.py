"""Plain-text tables of a results.json document, for the terminal."""

from __future__ import annotations

from typing import Any


def _num(value: Any, fmt: str = ".3f") -> str:
    return "NA" if value is None else format(value, fmt)


def _p(value: Any) -> str:
    if value is None:
        return "NA"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _pct(value: Any) -> str:
    return "NA" if value is None else f"{100 * value:.1f}%"


def format_results(results: dict[str, Any]) -> str:
    """A biostatistician's view of every analysis in ``results``."""
    study = results["study"]
    lines = [f"{study['id']}: {study.get('title', '')}".rstrip(": ")]
    sites = results["sites"]
    lines.append(
        f"sites contributing: {len(sites)} ("
        + ", ".join(f"{s['id']} {s.get('country', '')}".strip() for s in sites)
        + f"); rounds: {results['rounds']}; wall time: {results['seconds']:.1f} s"
    )
    for site in results.get("sites_missing", []):
        lines.append(f"site NOT contributing: {site['id']} ({site.get('reason', '')})")
    for name, analysis in results["analyses"].items():
        lines.append("")
        lines.extend(_FORMATTERS[analysis["kind"]](name, analysis))
    return "\n".join(lines)


def _summary(name: str, a: dict[str, Any]) -> list[str]:
    lines = [f"[{name}] Table 1 by {a.get('by')}"]
    lines.append(f"  {'group':<24}{'N':>7}  {'age mean (SD)':>16}  sex  events/censored")
    groups = dict(a.get("groups", {}))
    if "overall" in a:
        groups["Overall"] = a["overall"]
    for level, g in groups.items():
        age = f"{_num(g.get('age_mean'), '.1f')} ({_num(g.get('age_sd'), '.1f')})"
        sex = " ".join(f"{k}={v}" for k, v in sorted(g.get("sex", {}).items()))
        ev = " ".join(
            f"{p}={g['events'][p]}/{g.get('censored', {}).get(p, 0)}"
            for p in sorted(g.get("events", {}))
        )
        lines.append(f"  {level:<24}{g.get('n', 0):>7}  {age:>16}  {sex}  {ev}")
    return lines


def _km(name: str, a: dict[str, Any]) -> list[str]:
    conf = int(round(100 * (1 - a.get("alpha", 0.05))))
    lines = [f"[{name}] Kaplan-Meier, endpoint {a['param']}, by {a.get('by') or 'none'}"]
    for level, g in a["groups"].items():
        ci = g.get("median_ci") or [None, None]
        lines.append(
            f"  {level:<24} median {_num(g.get('median'), '.1f')} "
            f"({conf}% CI {_num(ci[0], '.1f')} to {_num(ci[1], '.1f')})"
        )
        at = g.get("at") or {}
        for t, s, r in zip(
            at.get("time", []), at.get("survival", []), at.get("at_risk", []), strict=False
        ):
            lines.append(f"      t={_num(t, 'g'):>8}  S={_num(s, '.4f')}  at risk={r}")
    return lines


def _logrank(name: str, a: dict[str, Any]) -> list[str]:
    strata = ", ".join(a.get("strata", [])) or "none"
    return [
        f"[{name}] log-rank test of {a['param']} by {a.get('by')} (strata: {strata}): "
        f"chi2 = {_num(a.get('statistic'))}, df = {a.get('df')}, p = {_p(a.get('p'))}"
    ]


def _cox_terms(a: dict[str, Any]) -> list[str]:
    lines = [f"  {'term':<36}{'HR':>8}  {'95% CI':>17}  {'p':>8}"]
    for term, t in a.get("terms", {}).items():
        ci = f"{_num(t.get('hr_lower'))}-{_num(t.get('hr_upper'))}"
        lines.append(f"  {term:<36}{_num(t.get('hr')):>8}  {ci:>17}  {_p(t.get('p')):>8}")
    return lines


def _cox(name: str, a: dict[str, Any]) -> list[str]:
    strata = ", ".join(a.get("strata", [])) or "none (pooled baseline)"
    state = "converged" if a.get("converged") else "DID NOT CONVERGE"
    head = (
        f"[{name}] Cox PH, endpoint {a.get('param')}, ties {a.get('ties')}, strata {strata}: "
        f"{state} in {a.get('rounds')} rounds; n = {a.get('n')}, events = {a.get('events')}"
    )
    lines = [head]
    if a.get("message"):
        lines.append(f"  note: {a['message']}")
    return lines + _cox_terms(a)


def _ve(name: str, a: dict[str, Any]) -> list[str]:
    lines = [
        f"[{name}] efficacy of {a.get('treatment')} vs {a.get('reference')} on {a['param']}: "
        f"VE = {_pct(a.get('ve'))} (95% CI {_pct(a.get('lower'))} to {_pct(a.get('upper'))}), "
        f"HR = {_num(a.get('hr'))}, p = {_p(a.get('p'))}"
    ]
    for country, c in a.get("by_country", {}).items():
        lines.append(
            f"  {country}: VE = {_pct(c.get('ve'))} ({_pct(c.get('lower'))} to "
            f"{_pct(c.get('upper'))}), HR = {_num(c.get('hr'))}, n = {c.get('n')}, "
            f"events = {c.get('events')}"
        )
    if a.get("by_country"):
        lines.append(f"  treatment-by-country interaction p = {_p(a.get('interaction_p'))}")
    if a.get("cox", {}).get("message"):
        lines.append(f"  note: {a['cox']['message']}")
    return lines


_FORMATTERS = {"summary": _summary, "km": _km, "logrank": _logrank, "cox": _cox, "ve": _ve}
