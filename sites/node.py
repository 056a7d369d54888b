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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.errors import UserError
from sites import audit
from sites.answers import Refusal, Work, answer
from sites.bundle import SiteBundle
from sites.prepared import cached_bundle
from sites.secure import answer_secure, round_one_info

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

    def compute(bundle: SiteBundle, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        work = answer(bundle, request, folder)
        if work.plan.run.secure_aggregation and work.round == 1:
            work.secure = round_one_info(bundle, work.plan)
        return {"ok": True, "reply": work.reply(bundle)}, {
            **_work_fields(work),
            "released": audit.released(work.answers),
        }

    return _served(bundle_path, request, audit_log, compute)


def serve_secure(
    bundle_path: Path, request: Any, audit_log: Path | None = None
) -> tuple[NDArray[np.float64] | None, dict[str, Any]]:
    """Compute this site's vector for one secure round (:mod:`sites.secure`), audited.

    Returns the vector (None after a refusal: nothing may leave) and the payload that leaves in
    the clear beside the masked vector: ``{"ok": True, "reply": {"site", "round", "refused",
    "disclosure", "layout", "numbers"}, "audit"}`` or a refusal as in :func:`serve`. The audit
    entry records the vector's digest and size, never the vector.
    """
    vectors: list[NDArray[np.float64]] = []

    def compute(bundle: SiteBundle, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        done = answer_secure(bundle, request, folder)
        assert done.vector is not None and done.layout is not None
        reply = done.work.reply(bundle)
        reply.pop("answers")
        reply.update(layout=done.layout.digest(), numbers=int(done.vector.size))
        vectors.append(done.vector)
        released = {"secure_sum": audit.released({"vector": done.vector})["vector"]}
        fields = {**_work_fields(done.work), "released": released, "layout": reply["layout"]}
        return {"ok": True, "reply": reply}, {**fields, "secure_aggregation": True}

    payload = _served(bundle_path, request, audit_log, compute)
    return (vectors[0] if payload["ok"] and vectors else None), payload


def record_refusal(
    bundle_path: Path, audit_log: Path | None, rule: str, message: str
) -> dict[str, Any]:
    """Audit a refusal decided outside :func:`serve` (e.g. the secure-aggregation guard of the
    ClientApp) and return its refusal payload."""

    def refuse(bundle: SiteBundle, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        raise Refusal(rule, f"site {bundle.site_id}: {message}")

    return _served(bundle_path, None, audit_log, refuse)


def _work_fields(work: Work) -> dict[str, Any]:
    return {
        "study": work.plan.study_id,
        "asked": work.asked,
        "outcome": "answered",
        "refused": {a: r["rule"] for a, r in work.refused.items()},
    }


Compute = Callable[[SiteBundle, Path], tuple[dict[str, Any], dict[str, Any]]]


def _served(
    bundle_path: Path, request: Any, audit_log: Path | None, compute: Compute
) -> dict[str, Any]:
    """Run ``compute(bundle, audit folder)`` -> (payload, audit fields); every error becomes an
    audited refusal, and a site that cannot write its audit log refuses: fail closed."""
    log = audit_log or default_audit_log(bundle_path)
    site_id = Path(bundle_path).name
    fields: dict[str, Any] = {
        **_request_fields(request),
        "request_sha256": audit.payload_digest(request),
    }
    try:
        bundle = cached_bundle(Path(bundle_path))
        site_id = bundle.site_id
        payload, more = compute(bundle, log.parent)
        fields.update(more)
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
    try:
        payload["audit"] = audit.record(log, site_id, fields)
    except UserError as exc:
        return {"ok": False, "error": str(exc), "rule": "audit", "site": site_id}
    return payload
