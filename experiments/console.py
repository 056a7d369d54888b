"""Plain-text tables of a results.json document, for the terminal."""

from __future__ import annotations

from collections import Counter
from typing import Any

from experiments.presentation import presentations, text_table


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
    for refusal in results.get("refusals", []):
        what = refusal.get("analysis") or "the run"
        lines.append(
            f"site {refusal['site']} refused {what} ({refusal.get('rule')}): "
            f"{refusal.get('message')}"
        )
    rules = Counter(n.get("rule") for n in results.get("disclosure", []))
    if rules:
        counts = ", ".join(f"{rule}: {count}" for rule, count in sorted(rules.items()))
        lines.append(
            f"disclosure rules changed what left the sites ({counts}); see results.json "
            "'disclosure' and the report"
        )
    for name, shown in presentations(results).items():
        lines.append("")
        lines.append(f"[{name}] {shown.heading}")
        lines += [f"  {line}" for line in shown.lines]
        for table in shown.tables:
            if not table.detail:
                lines += text_table(table)
    return "\n".join(lines)
