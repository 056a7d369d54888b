"""Regulatory-style figures from a ``results.json`` dict (see docs/design.md).

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
``pyplot``, so nothing here touches global backend state. Every figure is written as PNG and SVG
with deterministic names: ``km_<analysis>``, ``forest``, ``convergence_<analysis>``.
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

from experiments.presentation import presentations

COLORS = ["#1f4e9c", "#c0392b", "#2e8b57", "#8e44ad", "#d68910", "#566573"]
_STYLE = {"font.size": 9.0, "axes.titlesize": 10.0, "axes.labelsize": 9.0, "svg.hashsalt": "tf"}


def safe_name(name: str) -> str:
    """A file-name-safe version of an analysis name (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return cleaned or "analysis"


def fmt_num(x: float | None, digits: int = 2) -> str:
    """Format a number for a figure or table; None and non-finite values become ``NE``."""
    if x is None or not math.isfinite(float(x)):
        return "NE"
    return f"{float(x):.{digits}f}"


def fmt_p(p: float | None) -> str:
    """Format a p-value the regulatory way (``<0.001`` below one in a thousand)."""
    if p is None or not math.isfinite(float(p)):
        return "NE"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float | None) -> str:
    """``p = 0.052`` or ``p < 0.001``."""
    text = fmt_p(p)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


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


def risk_table_times(km: Mapping[str, Any]) -> list[float]:
    """The x positions of the number-at-risk table: the plan ``at`` times or a round grid."""
    groups = km.get("groups", {})
    for group in groups.values():
        at = group.get("at") or {}
        if at.get("time"):
            return [0.0] + [float(t) for t in at["time"] if float(t) > 0]
    t_max = max((max(_float(g["time"]), default=0.0) for g in groups.values()), default=0.0)
    if t_max <= 0:
        return [0.0]
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, t_max)
    return [float(t) for t in ticks if 0.0 <= t <= t_max]


def _param_label(analysis: Mapping[str, Any]) -> str:
    for key in ("param_label", "param_name", "param"):
        if analysis.get(key):
            return str(analysis[key])
    return ""


def plot_km(name: str, km: Mapping[str, Any], cumulative: bool = False) -> Figure:
    """Kaplan-Meier curves by group with confidence bands, censor ticks and a risk table.

    Parameters
    ----------
    name : str
        Analysis name (used in the title).
    km : mapping
        A ``km`` analysis of results.json.
    cumulative : bool
        Plot the cumulative incidence ``1 - S(t)`` (vaccine trials) instead of ``S(t)``.
    """
    groups: Mapping[str, Any] = km.get("groups", {})
    grid = risk_table_times(km)
    with _rc():
        table_h = 0.3 + 0.22 * len(groups)
        height = 4.2 + table_h
        fig = _new_figure(8.0, height)
        ax = fig.add_axes((0.2, (table_h + 0.55) / height, 0.76, 3.3 / height))
        table = fig.add_axes((0.2, 0.05 / height, 0.76, (table_h - 0.3) / height), sharex=ax)
        conf = int(round(100 * (1 - float(km.get("alpha") or 0.05))))
        for i, (level, g) in enumerate(groups.items()):
            color = COLORS[i % len(COLORS)]
            t = [0.0] + _float(g["time"])
            s = [1.0] + _float(g["survival"])
            lo = [1.0] + _float(g.get("ci_lower", [None] * (len(t) - 1)))
            hi = [1.0] + _float(g.get("ci_upper", [None] * (len(t) - 1)))
            if cumulative:
                s, lo, hi = [1 - v for v in s], [1 - v for v in hi], [1 - v for v in lo]
            n0 = g["at_risk"][0] if g.get("at_risk") else 0
            med = g.get("median")
            mci = g.get("median_ci") or [None, None]
            med_txt = "NR" if med is None else fmt_num(med, 1)
            label = (
                f"{level} (N={n0}; median {med_txt} [{fmt_num(mci[0], 1)}, {fmt_num(mci[1], 1)}])"
            )
            ax.step(t, s, where="post", color=color, lw=1.6, label=label)
            ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, lw=0)
            cens = [
                (ti, si)
                for ti, si, c in zip(t[1:], s[1:], g.get("censored", []), strict=False)
                if c and c > 0
            ]
            if cens:
                ax.plot(*zip(*cens, strict=True), ls="none", marker="+", ms=6, color=color)
            table.text(
                -0.05,
                -i,
                str(level),
                ha="right",
                va="center",
                color=color,
                transform=table.get_yaxis_transform(),
            )
            for x in grid:
                table.text(x, -i, str(at_risk_at(g, x)), ha="center", va="center", color=color)
        param = _param_label(km)
        ylabel = "Cumulative incidence (1 - KM)" if cumulative else "Survival probability"
        ax.set_ylabel(f"{ylabel}\n{param}" if param else ylabel)
        if not cumulative:
            ax.set_ylim(0.0, 1.02)
        else:
            ax.set_ylim(bottom=0.0)
        ax.set_xlim(left=0.0)
        ax.set_xticks(grid)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel(f"Time ({param})" if param else "Time")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(
            loc="lower left" if not cumulative else "upper left",
            frameon=False,
            title=f"{km.get('by') or 'group'}: + censored; {conf}% CI shaded",
        )
        title = f"Kaplan-Meier: {param}" if param else "Kaplan-Meier"
        ax.set_title(f"{title} by {km.get('by') or 'group'} ({name})", loc="left")
        table.set_ylim(-len(groups) + 0.5, 0.5)
        table.text(
            -0.05,
            0.9,
            "Number at risk",
            ha="right",
            va="bottom",
            fontweight="bold",
            transform=table.get_yaxis_transform(),
        )
        table.axis("off")
    return fig


MAX_FOREST_SITES = 40
"""Per-site rows in the forest plot at most; with more sites the report's table lists them."""


def _forest_rows(results: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(label, values or None for a heading, right-hand text) from every forest figure."""
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
    for shown in presentations(results).values():
        for figure in shown.figures:
            if figure.type != "forest":
                continue
            for row in figure.data.get("rows", []):
                label = str(row.get("label", ""))
                if row.get("header"):
                    if row.get("interaction_p") is not None:
                        label += f"  (interaction {p_text(row['interaction_p'])})"
                    rows.append((label, None, ""))
                    continue
                extra = row.get("extra")
                text = p_text(extra) if row.get("extra_format") == "p" else str(extra or "")
                rows.append(("  " * (1 + int(row.get("indent", 0))) + label, dict(row), text))
    return rows


def plot_forest(results: Mapping[str, Any]) -> Figure | None:
    """Forest plot of hazard ratios on a log axis (the rows every analysis declares).

    Returns None when no analysis declares forest rows.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    rows = _forest_rows(results)
    if not rows:
        return None
    height = 1.1 + 0.28 * (len(rows) + 1)
    with _rc():
        fig = _new_figure(10.0, height)
        ax = fig.add_axes((0.36, 0.6 / height, 0.3, (height - 1.0) / height))
        ax.set_xscale("log")
        left = blended_transform_factory(fig.transFigure, ax.transData)
        values: list[float] = []
        for i, (label, r, extra) in enumerate(rows):
            y = -i
            if r is None:
                ax.text(0.01, y, label, ha="left", va="center", transform=left, fontweight="bold")
                continue
            ax.text(0.03, y, label.strip(), ha="left", va="center", transform=left)
            hr, lo, hi = (r.get(k) for k in ("hr", "hr_lower", "hr_upper"))
            ci = f"{fmt_num(hr)} ({fmt_num(lo)}, {fmt_num(hi)})"
            ax.text(0.68, y, ci, ha="left", va="center", transform=left)
            ax.text(0.83, y, extra, ha="left", va="center", transform=left)
            if hr is None or not math.isfinite(hr) or hr <= 0:
                continue
            if lo is not None and hi is not None and lo > 0 and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color="black", lw=1.2)
                values += [lo, hi]
            ax.plot([hr], [y], marker="s", color=COLORS[0], ms=6)
            values.append(hr)
        ax.text(0.68, 1, "HR (95% CI)", ha="left", va="center", transform=left, fontweight="bold")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        lo_x = min(values + [0.5]) / 1.25
        hi_x = max(values + [2.0]) * 1.25
        ax.set_xlim(lo_x, hi_x)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0) if lo_x <= t <= hi_x]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-len(rows) + 0.5, 1.5)
        ax.set_yticks([])
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("Hazard ratio (log scale); < 1 favours treatment")
        fig.suptitle(
            "Hazard ratios with 95% confidence intervals",
            x=0.01,
            ha="left",
            y=1 - 0.12 / height,
            va="top",
            fontsize=10,
        )
    return fig


def plot_convergence(name: str, cox: Mapping[str, Any]) -> Figure | None:
    """Federated Newton convergence by round: log-likelihood and log10 step norm.

    Returns None when the Cox result has no ``history``.
    """
    history = cox.get("history") or []
    if not history:
        return None
    rounds = [int(h["round"]) for h in history]
    with _rc():
        fig = _new_figure(8.0, 3.2)
        ax1 = fig.add_subplot(1, 2, 1)
        ax2 = fig.add_subplot(1, 2, 2)
        ll = [(r, h["loglik"]) for r, h in zip(rounds, history, strict=True) if h.get("loglik")]
        if ll:
            ax1.plot(*zip(*ll, strict=True), marker="o", color=COLORS[0])
        ax1.set_title(f"{name}: partial log-likelihood", loc="left")
        ax1.set_ylabel("log-likelihood")
        steps = [
            (r, math.log10(h["step_norm"]))
            for r, h in zip(rounds, history, strict=True)
            if h.get("step_norm") is not None and h["step_norm"] > 0
        ]
        if steps:
            ax2.plot(*zip(*steps, strict=True), marker="o", color=COLORS[1])
        ax2.set_title(f"{name}: Newton step size", loc="left")
        ax2.set_ylabel("log10 ||step||")
        for ax in (ax1, ax2):
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, lw=0.5)
        fig.tight_layout()
    return fig


def _rc() -> Any:
    import matplotlib

    style: Any = _STYLE  # matplotlib types rc keys as a Literal union
    return matplotlib.rc_context(style)


def write_plots(results: Mapping[str, Any], out_dir: Path) -> dict[str, list[Path]]:
    """Draw every figure the analyses declare into ``out_dir``.

    Returns
    -------
    dict
        Analysis name (or ``"forest"``, one plot for every analysis's forest rows) -> the PNG
        and SVG paths written for it, in order.
    """
    written: dict[str, list[Path]] = {}
    for name, shown in presentations(results).items():
        for figure in shown.figures:
            drawn: Figure | None = None
            if figure.type == "km" and figure.data.get("groups"):
                cumulative = figure.data.get("display") == "incidence"
                drawn = plot_km(name, figure.data, cumulative=cumulative)
            elif figure.type == "convergence":
                drawn = plot_convergence(name, figure.data)
            if drawn is not None:
                paths = save_figure(drawn, out_dir, safe_name(figure.id))
                written.setdefault(name, []).extend(paths)
    forest = plot_forest(results)
    if forest is not None:
        written["forest"] = save_figure(forest, out_dir, "forest")
    return written
