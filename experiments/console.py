"""Plain-text tables of a results.json document, for the terminal, in the report's language."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from experiments.presentation import (
    effect_text,
    locale_for,
    notation,
    presentations,
    primary,
    text_table,
)


def format_results(results: dict[str, Any], lang: str | None = None) -> str:
    """A biostatistician's view of every analysis in ``results``: the headline first."""
    loc = locale_for(results, lang)
    study = results["study"]
    lines = [f"{study['id']}: {study.get('title', '')}".rstrip(": ")]
    if results.get("synthetic"):
        lines.append(loc.t("report.synthetic"))
    sites = results["sites"]
    lines.append(
        loc.t(
            "console.sites",
            n=len(sites),
            sites=loc.t("list_sep").join(
                f"{s['id']} {loc.level('COUNTRY', s.get('country') or '')}".strip() for s in sites
            ),
            rounds=results["rounds"],
            seconds=f"{results['seconds']:.1f}",
        )
    )
    for site in results.get("sites_missing", []):
        lines.append(loc.t("console.missing", site=site["id"], reason=site.get("reason", "")))
    for refusal in results.get("refusals", []):
        lines.append(
            loc.t(
                "console.refused",
                site=refusal["site"],
                what=refusal.get("analysis") or loc.t("console.the_run"),
                rule=refusal.get("rule"),
                message=refusal.get("message"),
            )
        )
    rules = Counter(n.get("rule") for n in results.get("disclosure", []))
    if rules:
        counts = ", ".join(f"{rule}: {count}" for rule, count in sorted(rules.items()))
        lines.append(loc.t("console.disclosure", counts=counts))
    shown = presentations(results, loc)
    head = primary(results, shown)
    if head is not None:
        lines.append("")
        for effect in head.effects:
            lines.append(loc.t("console.headline", text=effect_text(effect, loc)))
    for name, item in shown.items():
        lines.append("")
        lines.append(f"[{name}] {item.heading}")
        lines += [f"  {line}" for line in item.lines]
        for table in item.tables:
            if not table.detail:  # a table titled as its analysis is not titled twice
                untitled = replace(table, title="") if table.title == item.heading else table
                lines += text_table(untitled, loc=loc)
    lines.append("")
    lines.append(notation(shown, loc))
    return "\n".join(lines)
