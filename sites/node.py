"""What a trialfed node does with one coordinator request: answer it and audit it.

Shared by the Flower ClientApp and the in-process transport, so both behave the same: the bundle
is loaded (and validated) from its folder, the request is checked and answered with aggregates
only, and the reply, or the refusal, is recorded in the site's audit log before it leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.errors import UserError
from sites import audit
from sites.queries import answer, cached_bundle

AUDIT_DIR = ".trialfed"


def default_audit_log(bundle_path: Path) -> Path:
    """``<bundle>/.trialfed/audit.jsonl`` unless the node config names another file."""
    return Path(bundle_path) / AUDIT_DIR / "audit.jsonl"


def serve(
    bundle_path: Path, request: dict[str, Any], audit_log: Path | None = None
) -> dict[str, Any]:
    """``{"ok": True, "reply": ...}`` or ``{"ok": False, "error": ...}``, audited either way."""
    log = audit_log or default_audit_log(bundle_path)
    site_id = Path(bundle_path).name
    try:
        bundle = cached_bundle(Path(bundle_path))
        site_id = bundle.site_id
        payload: dict[str, Any] = {"ok": True, "reply": answer(bundle, request)}
    except UserError as exc:
        payload = {"ok": False, "error": str(exc)}
    # A site that cannot write its audit log refuses (record raises UserError): fail closed.
    try:
        audit.record(log, site_id, request, payload, ok=bool(payload["ok"]))
    except UserError as exc:
        return {"ok": False, "error": str(exc)}
    return payload
