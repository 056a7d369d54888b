"""A self-contained HTML report of one federated run.

The page has inline CSS, PNG figures embedded as base64 ``data:`` URIs and no external URL, so it
opens from a results folder, an e-mail attachment or MLflow's artifact view alike.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.base import json_safe
from analysis.kinds.base import Presentation, Table
from experiments.plots import fmt_num
from experiments.presentation import cells, presentations

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


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table_html(table: Table) -> str:
    out = f"<h4>{_e(table.title)}</h4>" if table.title else ""
    out += _table([c.label for c in table.columns], cells(table))
    out += "".join(f"<p class='note'>{_e(n)}</p>" for n in table.notes)
    return out


def _section(shown: Presentation) -> str:
    out = "".join(f"<p>{_e(line)}</p>" for line in shown.lines)
    return out + "".join(_table_html(t) for t in shown.tables if not t.detail)


def _disclosure_html(results: Mapping[str, Any]) -> str:
    rows = [
        [n.get("site"), n.get("analysis"), n.get("rule"), n.get("change")]
        for n in results.get("disclosure", [])
    ]
    refusals = [
        [r.get("site"), r.get("analysis") or "(all)", r.get("rule"), r.get("message")]
        for r in results.get("refusals", [])
    ]
    out = ""
    if refusals:
        out += "<h3>Refusals</h3>" + _table(["Site", "Analysis", "Rule", "Reason"], refusals)
    if rows:
        out += "<h3>What the disclosure rules changed</h3>"
        out += _table(["Site", "Analysis", "Rule", "Change"], rows)
    return out or "<p>No site rule changed or refused anything.</p>"


def _sites_html(results: Mapping[str, Any], sites: Sequence[Mapping[str, Any]]) -> str:
    by_id = {str(s.get("id")): dict(s) for s in sites}
    for s in results.get("sites", []):
        by_id.setdefault(str(s.get("id")), {}).update(s)
    missing = {
        str(m.get("id") if isinstance(m, Mapping) else m) for m in results.get("sites_missing", [])
    }
    rows = []
    for sid, s in sorted(by_id.items()):
        if sid == "None":  # a launcher's description without an id (e.g. a bundle path)
            continue
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
    parts.append("<h2>Site rules</h2>" + _disclosure_html(results))
    parts.append("<h2>Analyses</h2>")
    for name, shown in presentations(results).items():
        parts.append(f"<h3 id='{_e(name)}'>{_e(name)}: {_e(shown.heading)}</h3>")
        parts.append(_section(shown))
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


def write_tables(results: Mapping[str, Any], out_dir: Path) -> dict[str, list[Path]]:
    """Every table as ``<table id>.csv`` (raw values); return analysis name -> paths."""
    from experiments.plots import safe_name

    written: dict[str, list[Path]] = {}
    for name, shown in presentations(results).items():
        for table in shown.tables:
            path = out_dir / f"{safe_name(table.id)}.csv"
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow([c.key for c in table.columns])
                for row in table.rows:
                    writer.writerow([_csv_value(row.get(c.key)) for c in table.columns])
            written.setdefault(name, []).append(path)
    return written


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " to ".join("" if v is None else str(v) for v in value)
    return value
