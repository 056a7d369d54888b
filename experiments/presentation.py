"""Every analysis of a results.json rendered from its kind's declaration (no ``if kind``).

:func:`presentations` asks each analysis's kind (:mod:`analysis.kinds`) for its
:class:`~analysis.kinds.base.Presentation`; an analysis the sites refused gets a generic one.
The console, report, plots and MLflow code render these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analysis.kinds import REGISTRY
from analysis.kinds.base import Column, Presentation, Table
from analysis.kinds.format import fmt


def presentation(name: str, result: Mapping[str, Any]) -> Presentation:
    """The presentation of one results.json analysis."""
    if result.get("refused"):
        return refused(name, result)
    kind = REGISTRY.get(str(result.get("kind")))
    if kind is None:
        return Presentation(heading=f"analysis of unknown kind {result.get('kind')!r}")
    return kind.present(name, result)


def presentations(results: Mapping[str, Any]) -> dict[str, Presentation]:
    """Analysis name -> presentation, in plan order."""
    return {name: presentation(name, a) for name, a in results.get("analyses", {}).items()}


def refused(name: str, result: Mapping[str, Any]) -> Presentation:
    """An analysis too few sites answered: who refused, by which rule."""
    rows = tuple(
        {"site": r.get("site"), "rule": r.get("rule"), "message": r.get("message")}
        for r in result.get("refusals", [])
    )
    table = Table(
        f"{name}_refusals",
        "Refusals",
        (Column("site", "Site"), Column("rule", "Rule"), Column("message", "Reason")),
        rows,
    )
    return Presentation(
        heading=f"REFUSED: {result.get('message', '')}",
        tables=(table,),
        params={"kind": result.get("kind"), "refused": True},
    )


def cells(table: Table) -> list[list[str]]:
    """The table's rows as formatted strings, one list per row."""
    return [[fmt(row.get(c.key), c.format) for c in table.columns] for row in table.rows]


def text_table(table: Table, indent: str = "  ") -> list[str]:
    """A fixed-width text rendering (console)."""
    header = [c.label for c in table.columns]
    body = cells(table)
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return indent + "  ".join(parts).rstrip()

    out = [indent + table.title] if table.title else []
    out += [line(header)] + [line(r) for r in body]
    out += [f"{indent}note: {n}" for n in table.notes]
    return out
