"""A self-contained HTML report of one federated run.

The page has inline CSS, PNG figures embedded as base64 ``data:`` URIs and no external URL, so it
opens from a results folder, an e-mail attachment or MLflow's artifact view alike.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.base import json_safe
from experiments.plots import fmt_num, fmt_p

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#1b1b1b;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;border-bottom:2px solid #1f4e9c;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;color:#1f4e9c}
h3{font-size:1.05em;margin-top:1.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #c8ccd2;padding:.25em .6em;text-align:right}
th{background:#eef2f8}
td:first-child,th:first-child{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}
dt{font-weight:600}dd{margin:0;font-family:monospace;word-break:break-all}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.8em;overflow:auto;font-size:.85em}
img{max-width:100%;height:auto;border:1px solid #e1e4e8;margin:.5em 0}
.missing{color:#c0392b;font-weight:600}.note{color:#555;font-size:.85em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(est: float | None, lo: float | None, hi: float | None, digits: int = 2) -> str:
    return f"{fmt_num(est, digits)} ({fmt_num(lo, digits)}, {fmt_num(hi, digits)})"


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * float(x)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _summary_html(a: Mapping[str, Any]) -> str:
    groups: dict[str, Any] = dict(a.get("groups", {}))
    if a.get("overall"):
        groups["Overall"] = a["overall"]
    names = list(groups)
    rows: list[list[Any]] = [["N"] + [g.get("n") for g in groups.values()]]
    rows.append(
        ["Age, mean (SD)"]
        + [
            f"{fmt_num(g.get('age_mean'), 1)} ({fmt_num(g.get('age_sd'), 1)})"
            for g in groups.values()
        ]
    )
    for field, label in (("sex", "Sex"), ("events", "Events"), ("censored", "Censored")):
        levels = sorted({k for g in groups.values() for k in (g.get(field) or {})})
        for level in levels:
            cells = []
            for g in groups.values():
                count = (g.get(field) or {}).get(level, 0)
                n = g.get("n") or 0
                cells.append(f"{count} ({100.0 * count / n:.1f}%)" if n else str(count))
            rows.append([f"{label}: {level}", *cells])
    return _table([f"{a.get('by') or ''}", *names], rows)


def _km_html(a: Mapping[str, Any]) -> str:
    conf = int(round(100 * (1 - float(a.get("alpha") or 0.05))))
    rows = []
    for level, g in a.get("groups", {}).items():
        mci = g.get("median_ci") or [None, None]
        n0 = g["at_risk"][0] if g.get("at_risk") else ""
        med = "not reached" if g.get("median") is None else fmt_num(g["median"], 1)
        rows.append(
            [
                level,
                n0,
                sum(g.get("events", [])),
                med,
                f"{fmt_num(mci[0], 1)}, {fmt_num(mci[1], 1)}",
            ]
        )
    out = _table(["Group", "N", "Events", "Median", f"{conf}% CI"], rows)
    at_rows = []
    for level, g in a.get("groups", {}).items():
        at = g.get("at") or {}
        for t, s, n in zip(
            at.get("time", []), at.get("survival", []), at.get("at_risk", []), strict=False
        ):
            at_rows.append([level, fmt_num(t, 1), fmt_num(s, 3), n])
    if at_rows:
        out += _table(["Group", "Time", "Survival", "At risk"], at_rows)
    return out


def _logrank_html(a: Mapping[str, Any]) -> str:
    rows = [
        [level, g.get("observed"), fmt_num(g.get("expected"), 1)]
        for level, g in a.get("groups", {}).items()
    ]
    stat = (
        f"<p>Chi-square = {fmt_num(a.get('statistic'), 3)}, df = {_e(a.get('df'))}, "
        f"p = {fmt_p(a.get('p'))}"
        + (f"; stratified by {_e(a['strata'])}" if a.get("strata") else "")
        + "</p>"
    )
    return _table(["Group", "Observed", "Expected"], rows) + stat


def _cox_html(a: Mapping[str, Any]) -> str:
    conf = int(round(100 * (1 - float(a.get("alpha") or 0.05))))
    rows = [
        [
            term,
            fmt_num(t.get("coef"), 4),
            fmt_num(t.get("se"), 4),
            _ci(t.get("hr"), t.get("hr_lower"), t.get("hr_upper")),
            fmt_num(t.get("z"), 2),
            fmt_p(t.get("p")),
        ]
        for term, t in a.get("terms", {}).items()
    ]
    out = _table(["Term", "coef", "SE", f"HR ({conf}% CI)", "z", "p"], rows)
    out += (
        f"<p class='note'>n = {_e(a.get('n'))}, events = {_e(a.get('events'))}, "
        f"log-likelihood = {fmt_num(a.get('loglik'), 4)}, ties = {_e(a.get('ties'))}, "
        f"strata = {_e(a.get('strata') or 'none')}, rounds = {_e(a.get('rounds'))}, "
        f"converged = {_e(a.get('converged'))}</p>"
    )
    return out


def _ve_html(a: Mapping[str, Any]) -> str:
    rows = [
        [
            "Overall",
            "",
            "",
            _ci(_pct(a.get("ve")), _pct(a.get("lower")), _pct(a.get("upper")), 1),
            _ci(a.get("hr"), a.get("hr_lower"), a.get("hr_upper")),
            fmt_p(a.get("p")),
        ]
    ]
    for country, c in a.get("by_country", {}).items():
        rows.append(
            [
                country,
                c.get("n"),
                c.get("events"),
                _ci(_pct(c.get("ve")), _pct(c.get("lower")), _pct(c.get("upper")), 1),
                _ci(c.get("hr"), c.get("hr_lower"), c.get("hr_upper")),
                "",
            ]
        )
    for site, c in a.get("by_site", {}).items():
        hr = c.get("hr")
        rows.append(
            [
                f"site {site} ({c.get('country')}), own fit",
                c.get("n"),
                c.get("events"),
                ""
                if hr is None
                else _ci(_pct(1 - hr), _pct(1 - c["hr_upper"]), _pct(1 - c["hr_lower"]), 1),
                _ci(hr, c.get("hr_lower"), c.get("hr_upper")),
                "",
            ]
        )
    out = (
        f"<p>{_e(a.get('treatment'))} vs {_e(a.get('reference'))} (arm variable "
        f"{_e(a.get('arm'))}); VE = 1 - HR.</p>"
    )
    out += _table(["", "N", "Events", "VE % (95% CI)", "HR (95% CI)", "p"], rows)
    ip = a.get("interaction_p")
    out += f"<p>Treatment-by-country interaction p = {fmt_p(ip) if ip is not None else 'n/a'}</p>"
    if a.get("cox"):
        out += "<h4>Underlying Cox model</h4>" + _cox_html(a["cox"])
    return out


_SECTIONS = {
    "summary": _summary_html,
    "km": _km_html,
    "logrank": _logrank_html,
    "cox": _cox_html,
    "ve": _ve_html,
}


def _sites_html(results: Mapping[str, Any], sites: Sequence[Mapping[str, Any]]) -> str:
    by_id = {str(s.get("id")): dict(s) for s in sites}
    for s in results.get("sites", []):
        by_id.setdefault(str(s.get("id")), {}).update(s)
    missing = {
        str(m.get("id") if isinstance(m, Mapping) else m) for m in results.get("sites_missing", [])
    }
    rows = []
    for sid, s in sorted(by_id.items()):
        contributed = bool(s.get("contributed")) and sid not in missing
        rows.append(
            [
                sid,
                s.get("name", ""),
                s.get("country", ""),
                s.get("n", ""),
                s.get("events", ""),
                "yes" if contributed else "NO",
            ]
        )
    for sid in sorted(missing - set(by_id)):
        rows.append([sid, "", "", "", "", "NO"])
    out = _table(["Site", "Name", "Country", "N", "Events", "Contributed"], rows)
    if missing:
        out += f"<p class='missing'>Sites missing: {_e(', '.join(sorted(missing)))}</p>"
    return out


def render_report(
    results: Mapping[str, Any],
    plan_text: str,
    provenance: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]] = (),
    images: Mapping[str, Sequence[Path]] | None = None,
) -> str:
    """The report as an HTML string.

    Parameters
    ----------
    results : mapping
        The results.json dict.
    plan_text : str
        The analysis plan (TOML) as run.
    provenance : mapping
        Extra provenance rows shown after the study header (versions, git commit, ...).
    sites : sequence of mapping
        Site descriptions (id, name, country, ...) merged with ``results["sites"]``.
    images : mapping, optional
        Analysis name (or ``"forest"``) -> figure paths; the PNGs are embedded.
    """
    images = images or {}
    study = results.get("study", {})
    title = f"{study.get('id', '')}: {study.get('title', '')}"
    prov: dict[str, Any] = {
        "Study": study.get("id"),
        "Plan SHA-256": results.get("plan_sha256"),
        "Engine": results.get("engine"),
        "MLflow run id": results.get("mlflow_run_id") or "not tracked",
        "Rounds": results.get("rounds"),
        "Seconds": fmt_num(results.get("seconds"), 1),
        "Report date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    prov.update(provenance)
    parts = [f"<h1>{_e(title)}</h1>", "<h2>Study and provenance</h2><dl>"]
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in prov.items()]
    parts.append("</dl><h2>Sites</h2>" + _sites_html(results, sites))
    parts.append("<h2>Analyses</h2>")
    for name, a in results.get("analyses", {}).items():
        kind = a.get("kind", "")
        parts.append(f"<h3 id='{_e(name)}'>{_e(name)} ({_e(kind)}, {_e(a.get('param', ''))})</h3>")
        render = _SECTIONS.get(kind)
        parts.append(render(a) if render else f"<pre>{_e(a)}</pre>")
        parts += [_img(p, f"{name} figure") for p in images.get(name, []) if p.suffix == ".png"]
    if images.get("forest"):
        parts.append("<h2>Forest plot</h2>")
        parts += [_img(p, "forest plot") for p in images["forest"] if p.suffix == ".png"]
    parts.append(f"<h2>Analysis plan</h2><pre>{_e(plan_text)}</pre>")
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(path: Path, **kwargs: Any) -> Path:
    """Render :func:`render_report` with ``kwargs`` into ``path`` (UTF-8); return the path."""
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path


def json_ready(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts (NaN/inf -> None)."""
    return json_safe(obj)


def _rows_for(a: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    kind = a.get("kind")
    if kind == "summary":
        header = ["group", "n", "age_mean", "age_sd", "field", "level", "count"]
        groups = {**a.get("groups", {}), **({"Overall": a["overall"]} if a.get("overall") else {})}
        rows = []
        for level, g in groups.items():
            base = [level, g.get("n"), g.get("age_mean"), g.get("age_sd")]
            counts = [
                (f, k, v)
                for f in ("sex", "events", "censored")
                for k, v in (g.get(f) or {}).items()
            ]
            rows += [base + list(c) for c in counts] or [base + ["", "", ""]]
        return header, rows
    if kind == "km":
        header = [
            "group",
            "time",
            "survival",
            "ci_lower",
            "ci_upper",
            "at_risk",
            "events",
            "censored",
        ]
        rows = []
        for level, g in a.get("groups", {}).items():
            cols = [g.get(k, []) for k in header[1:]]
            rows += [[level, *r] for r in zip(*cols, strict=False)]
        return header, rows
    if kind == "logrank":
        header = ["group", "observed", "expected", "statistic", "df", "p"]
        rows = [
            [k, g.get("observed"), g.get("expected"), a.get("statistic"), a.get("df"), a.get("p")]
            for k, g in a.get("groups", {}).items()
        ]
        return header, rows
    if kind in {"cox", "ve"}:
        header = [
            "row",
            "hr",
            "hr_lower",
            "hr_upper",
            "ve",
            "ve_lower",
            "ve_upper",
            "coef",
            "se",
            "z",
            "p",
            "n",
            "events",
        ]
        rows = []
        if kind == "ve":
            rows.append(
                [
                    "overall",
                    a.get("hr"),
                    a.get("hr_lower"),
                    a.get("hr_upper"),
                    a.get("ve"),
                    a.get("lower"),
                    a.get("upper"),
                    "",
                    "",
                    "",
                    a.get("p"),
                    "",
                    "",
                ]
            )
            for c, r in a.get("by_country", {}).items():
                rows.append(
                    [
                        f"country {c}",
                        r.get("hr"),
                        r.get("hr_lower"),
                        r.get("hr_upper"),
                        r.get("ve"),
                        r.get("lower"),
                        r.get("upper"),
                        "",
                        "",
                        "",
                        "",
                        r.get("n"),
                        r.get("events"),
                    ]
                )
            rows.append(
                ["interaction", "", "", "", "", "", "", "", "", "", a.get("interaction_p"), "", ""]
            )
        cox = a if kind == "cox" else a.get("cox") or {}
        for term, t in cox.get("terms", {}).items():
            rows.append(
                [
                    f"term {term}",
                    t.get("hr"),
                    t.get("hr_lower"),
                    t.get("hr_upper"),
                    "",
                    "",
                    "",
                    t.get("coef"),
                    t.get("se"),
                    t.get("z"),
                    t.get("p"),
                    cox.get("n"),
                    cox.get("events"),
                ]
            )
        return header, rows
    return ["key", "value"], [[k, json.dumps(v)] for k, v in a.items()]


def write_tables(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """One CSV per analysis, ``<analysis>.csv``; return analysis name -> path."""
    from experiments.plots import safe_name

    written = {}
    for name, a in results.get("analyses", {}).items():
        header, rows = _rows_for(a)
        path = out_dir / f"{safe_name(name)}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([["" if v is None else v for v in r] for r in rows])
        written[name] = path
    return written
