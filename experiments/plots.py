"""Regulatory-style figures drawn from the analyses' figure declarations (see docs/reports.md).

Each :class:`~analysis.kinds.base.Figure` carries its words (title, axis labels, legend) in the
report's language; this module only draws. Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, never through ``pyplot``, and
written as PNG and SVG: ``figures/<id>`` (results), ``diagnostics/<id>`` (convergence). Forest
declarations with the same id (e.g. ``forest_hr`` from several Cox analyses) make one figure.

Conventions (CDISC pilot Figure 14-1, visR/ggsurvfit): labelled axes with units, a percent
scale, regular ticks over the whole follow-up with the number at risk aligned under them,
censor marks, confidence bands, and one colour per arm role (the reference arm always grey).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.kinds.base import Figure as FigureSpec
from analysis.kinds.format import Locale
from experiments import fonts
from experiments.presentation import locale_for, presentations

REFERENCE_COLOR = "#5b6670"
TREATMENT_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
"""Okabe-Ito colours (distinguishable with colour-vision deficiency) for the treatment arms."""
_STYLE = {"font.size": 9.0, "axes.titlesize": 10.0, "axes.labelsize": 9.0, "svg.hashsalt": "tf"}
FIGURES, DIAGNOSTICS = "figures", "diagnostics"


def safe_name(name: str) -> str:
    """A file-name-safe version of an analysis name (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return cleaned or "analysis"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg``; return both paths."""
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    with matplotlib.rc_context({"svg.hashsalt": "trialfed"}):
        tight: dict[str, Any] = {"bbox_inches": "tight", "pad_inches": 0.1}
        fig.savefig(paths[0], dpi=150, metadata={"Software": None}, **tight)
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None}, **tight)
    return paths


def _float(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def at_risk_at(group: Mapping[str, Any], t: float) -> int:
    """Number at risk at time ``t`` from a KM group's event table (rows with time >= t)."""
    times = _float(group.get("time", []))
    at_risk = group.get("at_risk", [])
    for ti, n in zip(times, at_risk, strict=False):
        if ti >= t:
            return int(n)
    return 0


def risk_table_times(groups: Mapping[str, Any]) -> list[float]:
    """Regular ticks over the whole follow-up (0 to the first tick at or past the last time):
    the x ticks of a KM figure and the times of its number-at-risk table."""
    t_max = max((max(_float(g.get("time", [])), default=0.0) for g in groups.values()), default=0)
    if not t_max > 0:
        return [0.0]
    ticks = MaxNLocator(nbins=10, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, t_max)
    out = [float(t) for t in ticks if t >= 0]
    return [t for i, t in enumerate(out) if i == 0 or out[i - 1] < t_max]


def arm_colors(levels: Sequence[str], roles: Mapping[str, str]) -> dict[str, str]:
    """One colour per arm: the reference arm grey, treatments in a fixed order."""
    colors, i = {}, 0
    for level in levels:
        if roles.get(level) == "reference":
            colors[level] = REFERENCE_COLOR
        else:
            colors[level] = TREATMENT_COLORS[i % len(TREATMENT_COLORS)]
            i += 1
    return colors


def _ordered(levels: Sequence[str], roles: Mapping[str, str]) -> list[str]:
    """The reference arm first, then the others as the analysis lists them."""
    return sorted(levels, key=lambda lv: roles.get(lv) != "reference")


def _percent_limit(values: list[float]) -> float:
    """A round upper limit of an incidence axis with room above the highest estimate (a
    band that reaches past it is clipped, as in published figures)."""
    top = max([v for v in values if math.isfinite(v)], default=0.1)
    for limit in (5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100):
        if 100 * top <= limit * 0.8:
            return float(limit)
    return 100.0


def _km_curve(
    ax: Any, g: Mapping[str, Any], color: str, label: str, incidence: bool
) -> list[float]:
    """One group's step curve, CI band and censor marks in percent; returns its estimates."""
    t = [0.0] + _float(g["time"])
    s = [1.0] + _float(g["survival"])
    lo = [1.0] + _float(g.get("ci_lower") or [None] * (len(t) - 1))
    hi = [1.0] + _float(g.get("ci_upper") or [None] * (len(t) - 1))
    if incidence:
        s, lo, hi = [1 - v for v in s], [1 - v for v in hi], [1 - v for v in lo]
    pct = [100 * v for v in s]
    ax.step(t, pct, where="post", color=color, lw=1.6, label=label)
    band = ([100 * v for v in lo], [100 * v for v in hi])
    ax.fill_between(t, *band, step="post", color=color, alpha=0.15, lw=0)
    cens = [
        (ti, si)
        for ti, si, c in zip(t[1:], pct[1:], g.get("censored") or [], strict=False)
        if c and c > 0
    ]
    if cens:
        ax.plot(*zip(*cens, strict=True), ls="none", marker="+", ms=5, mew=0.9, color=color)
    return s


def _risk_table(
    table: Any, data: Mapping[str, Any], levels: Sequence[str], colors: Mapping[str, str]
) -> None:
    """Numbers at risk under the x ticks, one row per group in its colour."""
    grid = risk_table_times(data["groups"])
    left = table.get_yaxis_transform()
    for i, level in enumerate(levels):
        color = colors[level]
        table.annotate(
            data["labels"][level],
            xy=(0.0, -i),
            xycoords=left,
            xytext=(-26, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            color=color,
        )
        for x in grid:
            count = at_risk_at(data["groups"][level], x)
            table.text(x, -i, f"{count:,}", ha="center", va="center", color=color)
    table.set_ylim(-len(levels) + 0.5, 1.0)
    table.annotate(
        data.get("risk_title", ""),
        xy=(0.0, 0.9),
        xycoords=left,
        xytext=(-26, 0),
        textcoords="offset points",
        ha="right",
        va="center",
        fontweight="bold",
    )
    table.axis("off")


def plot_km(spec: FigureSpec) -> Figure:
    """Kaplan-Meier curves by group: title, legend above the plot, percent scale, CI bands,
    censor marks, and the number at risk under regular ticks over the whole follow-up."""
    data = spec.data
    roles = data.get("roles") or {}
    levels = _ordered(list(data["groups"]), roles)
    colors = arm_colors(levels, roles)
    incidence = bool(data.get("incidence"))
    grid = risk_table_times(data["groups"])
    # heights in inches, top to bottom: title, legend, plot, axis and note, risk table
    legend_h, plot_h, axis_h = 0.2 * (len(levels) + 1) + 0.1, 3.2, 0.85
    table_h = 0.3 + 0.22 * (len(levels) + 1)
    height = 0.35 + legend_h + plot_h + axis_h + table_h
    fig = _new_figure(8.0, height)
    left, width = 0.27, 0.69
    ax = fig.add_axes((left, (table_h + axis_h) / height, width, plot_h / height))
    table = fig.add_axes((left, 0.05 / height, width, (table_h - 0.1) / height), sharex=ax)
    estimates = [
        v
        for level in levels
        for v in _km_curve(
            ax, data["groups"][level], colors[level], data["legend"][level], incidence
        )
    ]
    _risk_table(table, data, levels, colors)
    ax.set_ylim(0.0, _percent_limit(estimates) if incidence else 101.0)
    ax.set_xlim(0.0, grid[-1] if len(grid) > 1 else None)
    ax.set_xticks(grid)
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:,.0f}")
    ax.tick_params(labelbottom=True)
    ax.set_ylabel(data["ylabel"])
    ax.set_xlabel(data["xlabel"])
    ax.grid(alpha=0.3, lw=0.5)
    top = 1 - 0.35 / height
    fig.text(0.01, 1 - 0.08 / height, spec.title, ha="left", va="top", fontsize=10.5)
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="upper left",
        bbox_to_anchor=(left, top),
        frameon=False,
        title=data.get("legend_title"),
        alignment="left",
        borderaxespad=0.0,
    )
    fig.text(
        left + width,
        (table_h + 0.12) / height,
        data.get("note", ""),
        ha="right",
        va="bottom",
        fontsize=7.5,
        color="#444444",
    )
    return fig


_FOREST_COLUMNS = (0.665, 0.79, 0.945)


def _wrap(text: str, limit: int = 64) -> list[str]:
    """``text`` in lines of at most ``limit`` columns (CJK characters count two), broken
    between words where it has spaces."""
    from experiments.presentation import width

    lines, line = [], ""
    for token in re.findall(r"\S+\s*|\s+", text) if " " in text else list(text):
        if line and width(line + token.rstrip()) > limit:
            lines.append(line.rstrip())
            line = ""
        line += token
    return [*lines, line.rstrip()] if line.strip() else lines


def _forest_rows(specs: Sequence[FigureSpec]) -> list[dict[str, Any]]:
    """The rows of every spec; a long heading row becomes several heading rows."""
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for row in spec.data.get("rows", []):
            if row.get("header"):
                rows += [{**row, "label": line} for line in _wrap(str(row["label"]))]
            else:
                rows.append(dict(row))
    return rows


def _scaled(value: Any, scale: float) -> float:
    """``value * scale``; NaN when missing."""
    return math.nan if value is None else scale * float(value)


def plot_forest(specs: Sequence[FigureSpec], loc: Locale) -> Figure | None:
    """A forest plot of the treatment-effect rows of ``specs`` (same id, same scale); None with
    fewer than two estimates (a one-row forest says nothing the table does not)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    rows = _forest_rows(specs)
    if sum(not r.get("header") for r in rows) < 2:
        return None
    first = specs[0].data
    ve = first.get("scale") == "ve"
    notes = [n for spec in specs for n in spec.data.get("notes", [])]
    height = 0.95 + 0.27 * (len(rows) + 1) + 0.2 * len(notes)
    fig = _new_figure(10.5, height)
    bottom = (0.75 + 0.2 * len(notes)) / height
    ax = fig.add_axes((0.38, bottom, 0.27, (height - 0.6) / height - bottom))
    if not ve:
        ax.set_xscale("log")
    left = blended_transform_factory(fig.transFigure, ax.transData)
    xs: list[float] = []
    for i, row in enumerate(rows):
        y = -i
        if row.get("header"):
            ax.text(
                0.01, y, row["label"], ha="left", va="center", transform=left, fontweight="bold"
            )
            continue
        indent = 0.015 * (1 + int(row.get("indent", 0)))
        ax.text(0.01 + indent, y, row["label"], ha="left", va="center", transform=left)
        est, lo, hi = row.get("hr"), row.get("lower"), row.get("upper")
        fmt = "pct" if ve else "hr"
        cells = [
            f"{loc.fmt(row.get('n'), 'int')} / {loc.fmt(row.get('events'), 'int')}",
            loc.fmt([est, lo, hi], f"est_{fmt}"),
            loc.fmt(row.get("p"), "p") if row.get("p") is not None else "",
        ]
        for x, text in zip(_FOREST_COLUMNS, cells, strict=True):
            ax.text(x, y, text, ha="left", va="center", transform=left)
        scale = 100.0 if ve else 1.0
        point, low, high = (_scaled(v, scale) for v in (est, lo, hi))
        if not math.isfinite(point) or (not ve and point <= 0):
            continue
        if math.isfinite(low) and math.isfinite(high) and (ve or low > 0):
            ax.plot([low, high], [y, y], color="black", lw=1.2)
            xs += [low, high]
        marker = "D" if int(row.get("indent", 0)) == 0 else "s"
        ax.plot(
            [point], [y], marker=marker, color=TREATMENT_COLORS[0], ms=6 if marker == "s" else 7
        )
        xs.append(point)
    for x, text in zip(_FOREST_COLUMNS, first.get("columns", []), strict=False):
        ax.text(x, 1, text, ha="left", va="center", transform=left, fontweight="bold")
    if ve:
        lo_x = max(min(xs + [0.0]) - 10, -100.0)
        ax.set_xlim(lo_x, 100.0)
        ax.axvline(0.0, color="grey", lw=0.8, ls="--")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    else:
        lo_x = min(xs + [0.5]) / 1.25
        hi_x = max(xs + [2.0]) * 1.25
        ax.set_xlim(lo_x, hi_x)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0) if lo_x <= t <= hi_x]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    favours = first.get("favours") or []
    if len(favours) == 2 and all(s.data.get("favours") == favours for s in specs):
        ax.text(
            0.0, -0.17, f"← {favours[0]}", transform=ax.transAxes, ha="left", va="top", fontsize=8
        )
        ax.text(
            1.0, -0.17, f"{favours[1]} →", transform=ax.transAxes, ha="right", va="top", fontsize=8
        )
    ax.set_ylim(-len(rows) + 0.5, 1.5)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(first.get("axis", ""), labelpad=16 if favours else 4)
    for i, note in enumerate(dict.fromkeys(notes)):
        fig.text(0.01, (0.12 + 0.2 * i) / height, note, ha="left", va="bottom", fontsize=8)
    fig.suptitle(specs[0].title, x=0.01, ha="left", y=1 - 0.12 / height, va="top", fontsize=10)
    return fig


def plot_convergence(name: str, cox: Mapping[str, Any], loc: Locale | None = None) -> Figure | None:
    """Federated Newton convergence by round: log-likelihood and log10 step norm.

    Returns None when the Cox result has no ``history``.
    """
    loc = loc or Locale()
    history = cox.get("history") or []
    if not history:
        return None
    rounds = [int(h["round"]) for h in history]
    fig = _new_figure(8.0, 3.2)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    ll = [(r, h["loglik"]) for r, h in zip(rounds, history, strict=True) if h.get("loglik")]
    if ll:
        ax1.plot(*zip(*ll, strict=True), marker="o", color=TREATMENT_COLORS[0])
    ax1.set_title(loc.t("conv.loglik", name=name), loc="left")
    ax1.set_ylabel(loc.t("conv.ylog"))
    steps = [
        (r, math.log10(h["step_norm"]))
        for r, h in zip(rounds, history, strict=True)
        if h.get("step_norm") is not None and h["step_norm"] > 0
    ]
    if steps:
        ax2.plot(*zip(*steps, strict=True), marker="o", color=TREATMENT_COLORS[1])
    ax2.set_title(loc.t("conv.step", name=name), loc="left")
    ax2.set_ylabel(loc.t("conv.ystep"))
    for ax in (ax1, ax2):
        ax.set_xlabel(loc.t("conv.round"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig


def _rc(lang: str) -> Any:
    import matplotlib

    style: Any = {**_STYLE, "font.family": fonts.matplotlib_families(lang)}
    return matplotlib.rc_context(style)  # matplotlib types rc keys as a Literal union


def _draw(spec: FigureSpec, loc: Locale) -> Figure | None:
    if spec.type == "km" and spec.data.get("groups"):
        return plot_km(spec)
    if spec.type == "convergence":
        return plot_convergence(spec.title, spec.data, loc)
    return None


def write_plots(
    results: Mapping[str, Any], out_dir: Path, loc: Locale | None = None
) -> dict[str, list[Path]]:
    """Draw every figure the analyses declare under ``out_dir/figures`` (diagnostics under
    ``out_dir/diagnostics``).

    Returns
    -------
    dict
        Figure id (``km``, ``forest_ve``, ``cox_convergence``...) -> its PNG and SVG paths.
    """
    loc = loc or locale_for(results)
    written: dict[str, list[Path]] = {}
    forests: dict[str, list[FigureSpec]] = {}
    with _rc(loc.lang):
        for shown in presentations(results, loc).values():
            for spec in shown.figures:
                if spec.type == "forest":
                    forests.setdefault(spec.id, []).append(spec)
                    continue
                drawn = _draw(spec, loc)
                if drawn is not None:
                    folder = out_dir / (DIAGNOSTICS if spec.diagnostic else FIGURES)
                    written[spec.id] = save_figure(drawn, folder, safe_name(spec.id))
        for figure_id, specs in forests.items():
            forest = plot_forest(specs, loc)
            if forest is not None:
                written[figure_id] = save_figure(forest, out_dir / FIGURES, safe_name(figure_id))
    return written
