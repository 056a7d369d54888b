"""What a trialfed node does with one coordinator request: answer it and audit it.

Shared by the Flower ClientApp and the in-process transport, so both behave the same: the bundle
is loaded (and validated) from its folder, the work the plan derives is computed under the
site's policy (:mod:`sites.answers`), and the reply, or the refusal, is recorded in the site's
audit log before it leaves. The reply carries the log's head and entry count.

Reply payload: ``{"ok": True, "reply": {...}, "audit": {"head", "entries"}}`` or
``{"ok": False, "error": message, "rule": rule, "site": site id, "audit": {...}}``. Nothing raised
inside the handler escapes: every error is an audited refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.errors import UserError
from sites import audit
from sites.answers import Refusal, Work, answer
from sites.prepared import cached_bundle

AUDIT_DIR = ".trialfed"


def default_audit_log(bundle_path: Path) -> Path:
    """``<bundle>/.trialfed/audit.jsonl`` unless the node config names another file."""
    return Path(bundle_path) / AUDIT_DIR / "audit.jsonl"


def _request_fields(request: Any) -> dict[str, Any]:
    if not isinstance(request, Mapping):
        return {"request": "malformed"}
    return {"plan_sha256": request.get("plan_sha256"), "round": request.get("round")}


def serve(bundle_path: Path, request: Any, audit_log: Path | None = None) -> dict[str, Any]:
    """Answer one request; audited either way (see the module docstring for the payload)."""
    log = audit_log or default_audit_log(bundle_path)
    site_id = Path(bundle_path).name
    fields: dict[str, Any] = {
        **_request_fields(request),
        "request_sha256": audit.payload_digest(request),
    }
    work: Work | None = None
    try:
        bundle = cached_bundle(Path(bundle_path))
        site_id = bundle.site_id
        work = answer(bundle, request, log.parent)
        payload: dict[str, Any] = {"ok": True, "reply": work.reply(bundle)}
        fields.update(
            study=work.plan.study_id,
            asked=work.asked,
            outcome="answered",
            refused={a: r["rule"] for a, r in work.refused.items()},
            released=audit.released(work.answers),
        )
    except Refusal as exc:
        payload = {"ok": False, "error": exc.message, "rule": exc.rule, "site": site_id}
        fields.update(outcome="refused", rule=exc.rule, message=exc.message)
    except UserError as exc:  # the bundle itself is invalid
        payload = {"ok": False, "error": str(exc), "rule": "data", "site": site_id}
        fields.update(outcome="refused", rule="data", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - never an unaudited error (a yes/no oracle)
        message = f"site {site_id}: internal error {type(exc).__name__}: {exc}"
        payload = {"ok": False, "error": message, "rule": "error", "site": site_id}
        fields.update(outcome="refused", rule="error", message=message)
    fields["reply_sha256"] = audit.payload_digest(payload)
    # A site that cannot write its audit log refuses (record raises UserError): fail closed.
    try:
        payload["audit"] = audit.record(log, site_id, fields)
    except UserError as exc:
        return {"ok": False, "error": str(exc), "rule": "audit", "site": site_id}
    return payload
