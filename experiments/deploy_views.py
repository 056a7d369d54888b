"""What ``trialfed coordinator sites`` and ``trialfed status`` print: the roster joined with
Flower's view of the nodes, and the coordinator's runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from federation.deployment.roster import Roster


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        (indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in [header, *rows]
    )


def last_contact(node: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(status, last contact)`` of a Flower node as ``flwr supernode ls`` reports it."""
    if node is None:
        return "unknown to Flower", "-"
    status = str(node.get("status", "?"))
    if status == "online":
        return status, f"now (connected since {node.get('online-at')})"
    if status == "offline":
        return status, str(node.get("offline-at") or "-")
    return status, "never"


def sites_table(roster: Roster, nodes: Mapping[int, Mapping[str, Any]]) -> str:
    """The roster with each site's status, last contact, version and key fingerprint."""
    sites = roster.sites()
    rows = []
    for site in sites:
        status, contact = last_contact(nodes.get(site.node_id))
        rows.append(
            [
                site.site_id,
                site.country,
                status,
                contact,
                site.version or "-",
                str(site.last_run) if site.last_run is not None else "-",
                site.fingerprint,
                site.enrolled_at,
            ]
        )
    online = sum(1 for r in rows if r[2] == "online")
    text = f"sites: {len(sites)} enrolled, {online} online"
    if rows:
        header = ["SITE", "COUNTRY", "STATUS", "LAST CONTACT", "VERSION", "LAST RUN"]
        text += "\n" + _table([*header, "FINGERPRINT", "ENROLLED"], rows)
    known = {s.node_id for s in sites}
    gone = ("deleted", "unregistered")
    strays = [n for n, node in nodes.items() if n not in known and node.get("status") not in gone]
    for node_id in sorted(strays):
        text += f"\n  warning: Flower node {node_id} is registered but not on the roster"
    return text


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The coordinator's runs, newest first."""
    if not runs:
        return "runs: none"
    rows = [
        [
            str(r.get("run-id")),
            str(r.get("status")),
            str(r.get("pending-at") or "-"),
            str(r.get("finished-at") or "-"),
            str(r.get("elapsed") or "-"),
        ]
        for r in sorted(runs, key=lambda r: int(r.get("run-id", 0)), reverse=True)
    ]
    header = ["RUN", "STATE", "SUBMITTED", "FINISHED", "ELAPSED"]
    return f"runs: {len(rows)}\n" + _table(header, rows)
