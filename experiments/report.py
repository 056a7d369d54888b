"""A self-contained HTML report of one federated run, in English, Japanese or Korean.

Top to bottom: the primary result (estimate with CI and p) and its estimand, the data (sites and
countries, analysis set per arm, data cut-off, endpoints, the subject flow per site), the
treatment-effect forest plots, every analysis with its tables and figures, the sites' disclosure
rules, convergence diagnostics, provenance and the plan as run. A synthetic-data banner heads
the report of a generated trial.

The page has inline CSS, PNG figures and a subset of the CJK font (every character the page uses)
embedded as ``data:`` URIs and no external URL, so it opens from a results folder, an e-mail
attachment or MLflow's artifact view alike, with no missing glyph.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.base import json_safe
from analysis.kinds.base import Presentation, Table
from analysis.kinds.format import Locale
from experiments import fonts
from experiments.presentation import (
    cells,
    effect_text,
    locale_for,
    notation,
    presentations,
    primary,
)
from experiments.report_data import (
    data_section,
    flow_rows,
    html_table,
    provenance_rows,
    sites_section,
)

CSS = """
body{font-family:TrialfedSans,"Noto Sans CJK JP","Noto Sans CJK KR",Helvetica,Arial,sans-serif;
margin:2em auto;max-width:1100px;color:#1b1b1b;line-height:1.45;padding:0 1em}
pre,code,dd.mono{font-family:TrialfedMono,"Noto Sans Mono CJK JP",monospace}
h1{font-size:1.5em;border-bottom:2px solid #1f4e9c;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;color:#1f4e9c}
h3{font-size:1.05em;margin-top:1.4em}h4{font-size:.95em;margin:.9em 0 .2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #c8ccd2;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef2f8}td.num{text-align:right;white-space:nowrap}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}
dt{font-weight:600}dd{margin:0;word-break:break-all}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.8em;overflow:auto;font-size:.85em}
img{max-width:100%;height:auto;border:1px solid #e1e4e8;margin:.5em 0}
.missing{color:#c0392b;font-weight:600}.note{color:#555;font-size:.85em;margin:.2em 0}
.synthetic{background:#fff3cd;border:2px solid #d68910;color:#6b4a00;padding:.6em 1em;
font-weight:700;margin:1em 0}
.headline{border:2px solid #1f4e9c;background:#f4f7fc;padding:.6em 1.2em;margin:1em 0}
.headline .effect{font-size:1.2em;font-weight:700;margin:.3em 0}
.flow{display:flex;align-items:center;gap:.6em;margin:.8em 0;flex-wrap:wrap}
.flow div.box{border:1.5px solid #1f4e9c;border-radius:4px;padding:.4em .8em;background:#fff}
.flow span.arrow{font-size:1.4em;color:#1f4e9c}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _pngs(paths: Sequence[Path], alt: str) -> list[str]:
    return [_img(p, alt) for p in paths if p.suffix == ".png"]


def _table_html(table: Table, loc: Locale, heading: str = "") -> str:
    out = f"<h4>{_e(table.title)}</h4>" if table.title and table.title != heading else ""
    out += html_table([c.label for c in table.columns], cells(table, loc))
    out += "".join(f"<p class='note'>{_e(n)}</p>" for n in table.notes)
    return out


def _section(shown: Presentation, loc: Locale) -> str:
    out = "".join(f"<p>{_e(line)}</p>" for line in shown.lines)
    return out + "".join(_table_html(t, loc, shown.heading) for t in shown.tables if not t.detail)


def _headline_html(
    results: Mapping[str, Any], shown: Mapping[str, Presentation], loc: Locale
) -> str:
    head = primary(results, shown)
    if head is None:
        return f"<div class='headline'><p>{_e(loc.t('report.no_effect'))}</p></div>"
    parts = [f"<p>{_e(loc.t('report.primary', analysis=head.shown.heading))}</p>"]
    parts += [f"<p class='effect'>{_e(effect_text(e, loc))}</p>" for e in head.effects]
    if not head.chosen:
        parts.append(f"<p class='note'>{_e(loc.t('report.primary_guess'))}</p>")
    parts.append(data_section(results, shown, loc, estimand_of=head))
    others = [
        effect_text(e, loc, method=True)
        for name, item in shown.items()
        if name != head.analysis
        for e in item.effects
    ]
    if others:
        parts.append(f"<h4>{_e(loc.t('report.other_effects'))}</h4><ul>")
        parts += [f"<li>{_e(text)}</li>" for text in others]
        parts.append("</ul>")
    return "<div class='headline'>" + "".join(parts) + "</div>"


def _disclosure_html(results: Mapping[str, Any], loc: Locale) -> str:
    rows = [
        [n.get("site"), n.get("analysis"), n.get("rule"), n.get("change")]
        for n in results.get("disclosure", [])
    ]
    refusals = [
        [
            r.get("site"),
            r.get("analysis") or loc.t("report.all_analyses"),
            r.get("rule"),
            r.get("message"),
        ]
        for r in results.get("refusals", [])
    ]
    head = [loc.t("col.site"), loc.t("col.analysis"), loc.t("col.rule")]
    out = ""
    if refusals:
        out += f"<h3>{_e(loc.t('refused.table'))}</h3>"
        out += html_table([*head, loc.t("col.reason")], refusals)
    if rows:
        out += f"<h3>{_e(loc.t('report.disclosure_changes'))}</h3>"
        out += html_table([*head, loc.t("col.change")], rows)
    return out or f"<p>{_e(loc.t('report.no_rules'))}</p>"


def _figure_ids(
    shown: Mapping[str, Presentation],
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Per analysis its own result figures; the shared forest ids; the diagnostic ids."""
    own: dict[str, list[str]] = {}
    forests: list[str] = []
    diagnostics: list[str] = []
    for name, item in shown.items():
        for figure in item.figures:
            if figure.diagnostic:
                diagnostics.append(figure.id)
            elif figure.type == "forest":
                forests += [figure.id] if figure.id not in forests else []
            else:
                own.setdefault(name, []).append(figure.id)
    return own, forests, diagnostics


def render_report(
    results: Mapping[str, Any],
    plan_text: str,
    provenance: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]] = (),
    images: Mapping[str, Sequence[Path]] | None = None,
    lang: str | None = None,
) -> str:
    """The report as an HTML string.

    Parameters
    ----------
    results : mapping
        The results.json dict.
    plan_text : str
        The analysis plan (TOML) as run.
    provenance : mapping
        Extra provenance rows (label -> value: versions, git commit, ...).
    sites : sequence of mapping
        Site descriptions (id, name, country, ...) merged with ``results["sites"]``; entries
        without an id are ignored.
    images : mapping, optional
        Figure id -> figure paths (:func:`experiments.plots.write_plots`); the PNGs are embedded.
    lang : str, optional
        ``en``, ``ja`` or ``ko`` (default: the plan's ``[study] language``, else English).
    """
    loc = locale_for(results, lang)
    images = images or {}
    shown = presentations(results, loc)
    study = results.get("study", {})
    title = f"{study.get('title') or study.get('id', '')} ({study.get('id', '')})"
    own, forests, diagnostics = _figure_ids(shown)
    parts = [f"<h1>{_e(title)}</h1>"]
    if results.get("synthetic"):
        parts.append(f"<div class='synthetic'>{_e(loc.t('report.synthetic'))}</div>")
    parts.append(f"<h2>{_e(loc.t('report.headline'))}</h2>")
    parts.append(_headline_html(results, shown, loc))
    parts.append(f"<h2>{_e(loc.t('report.data'))}</h2>")
    parts.append(sites_section(results, sites, shown, loc))
    forest_imgs = [img for fid in forests for img in _pngs(images.get(fid, []), fid)]
    if forest_imgs:
        parts.append(f"<h2>{_e(loc.t('report.treatment_effects'))}</h2>")
        parts += forest_imgs
    parts.append(f"<h2>{_e(loc.t('report.analyses'))}</h2>")
    for name, item in shown.items():
        parts.append(f"<h3 id='{_e(name)}'>{_e(item.heading)} <small>[{_e(name)}]</small></h3>")
        parts.append(_section(item, loc))
        parts += [img for fid in own.get(name, []) for img in _pngs(images.get(fid, []), fid)]
    parts.append(f"<h2>{_e(loc.t('report.site_rules'))}</h2>" + _disclosure_html(results, loc))
    diag = [img for fid in diagnostics for img in _pngs(images.get(fid, []), fid)]
    if diag:
        parts.append(f"<h2>{_e(loc.t('report.diagnostics'))}</h2>")
        parts += diag
    parts.append(f"<h2>{_e(loc.t('report.provenance'))}</h2><dl>")
    for key, value in provenance_rows(results, provenance, loc, datetime.now(UTC)):
        parts.append(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>")
    parts.append(f"</dl><p class='note'>{_e(notation(shown, loc))}</p>")
    parts.append(f"<h2>{_e(loc.t('report.plan'))}</h2><pre>{_e(plan_text)}</pre>")
    body = "\n".join(parts)
    font_css = fonts.font_face_css(html.unescape(title + body), loc.lang)
    return (
        f"<!DOCTYPE html>\n<html lang='{loc.lang}'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{font_css}{CSS}</style></head><body>\n{body}\n"
        "</body></html>\n"
    )


def write_report(path: Path, **kwargs: Any) -> Path:
    """Render :func:`render_report` with ``kwargs`` into ``path`` (UTF-8); return the path."""
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path


def json_ready(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts (NaN/inf -> None)."""
    return json_safe(obj)


_SPLIT = {"est_time", "est_hr", "est_pct"}
_BOUNDS = {"ci", "hr_ci", "pct_ci"}


def _csv_columns(table: Table) -> list[str]:
    out = []
    for c in table.columns:
        if c.format in _SPLIT:
            out += [c.key, f"{c.key}_lower", f"{c.key}_upper"]
        elif c.format in _BOUNDS:
            out += [f"{c.key}_lower", f"{c.key}_upper"]
        else:
            out.append(c.key)
    return out


def _csv_row(table: Table, row: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for c in table.columns:
        value = row.get(c.key)
        if c.format in _SPLIT | _BOUNDS:
            width = 3 if c.format in _SPLIT else 2
            values = list(value) if isinstance(value, list | tuple) else [None] * width
            out += ["" if v is None else v for v in values]
        else:
            out.append("" if value is None else value)
    return out


def write_tables(
    results: Mapping[str, Any], out_dir: Path, loc: Locale | None = None
) -> dict[str, list[Path]]:
    """Every table as ``tables/<table id>.csv`` (raw values, an interval as two columns);
    return analysis name -> paths."""
    from experiments.plots import safe_name

    folder = out_dir / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name, shown in presentations(results, loc).items():
        for table in shown.tables:
            path = folder / f"{safe_name(table.id)}.csv"
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(_csv_columns(table))
                for row in table.rows:
                    writer.writerow(_csv_row(table, row))
            written.setdefault(name, []).append(path)
    return written


__all__ = ["flow_rows", "html_table", "json_ready", "render_report", "write_report", "write_tables"]
