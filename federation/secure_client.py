"""The site's side of a secure sum in the ClientApp: a guard, Flower's ``secaggplus_mod``, and the
handler that computes the site's vector (:func:`sites.node.serve_secure`).

Every SecAgg+ stage message is a ``train`` message carrying the SecAgg+ configuration record;
:func:`handle_train` sends those through :func:`guard` and ``secaggplus_mod`` and any other
``train`` message to the fallback handler (the ``train`` kind's, when one is registered), so a
ClientApp serves both. The guard is the site's own check of what the coordinator configures
(the coordinator controls those numbers): at least :data:`~federation.secure.MIN_SITES` sites in
the sum, its keys shared among :data:`~federation.secure.SHARES` of them (all in smaller
federations; no fewer), a majority reconstruction threshold (so a coordinator that tells some
sites a site dropped out and others that it did not cannot rebuild both of its masks), and the
exact-integer ranges of :mod:`analysis.fixedpoint`; in the later stages, at least three sites
still in the sum. A site that refuses answers an error
reply carrying its refusal, and drops out of the sum.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message

from analysis.fixedpoint import CLIPPING_RANGE, MAX_SITES, MODULUS_RANGE, QUANTIZATION_RANGE
from federation.flower_internals import (
    RECORD_KEY_CONFIGS,
    Code,
    ErrorCode,
    FitRes,
    SecAggKey,
    Stage,
    Status,
    fitres_to_recorddict,
    ndarrays_to_parameters,
    recorddict_to_fitins,
    secaggplus_mod,
)
from federation.secure import MIN_SITES, REPLY_KEY, REQUEST_KEY, SHARES, refusal_reason, to_text
from sites.node import record_refusal, serve_secure

Handler = Callable[[Message, Context], Message]
EXPECTED = {
    SecAggKey.CLIPPING_RANGE: CLIPPING_RANGE,
    SecAggKey.TARGET_RANGE: QUANTIZATION_RANGE,
    SecAggKey.MOD_RANGE: MODULUS_RANGE,
    SecAggKey.MAX_WEIGHT: 1.0,
}


class SecureRefused(Exception):
    """The site does not take part in this secure sum (``payload`` is its refusal)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("error", "refused"))
        self.payload = payload


def is_secure(message: Message) -> bool:
    """Whether a ``train`` message is a SecAgg+ stage message."""
    return RECORD_KEY_CONFIGS in message.content.config_records


def guard(configs: Mapping[str, Any]) -> str:
    """Why this site refuses a stage's SecAgg+ configuration ("" when it takes part)."""
    stage = configs.get(SecAggKey.STAGE)
    if stage == Stage.SETUP:
        sites, shares = configs.get(SecAggKey.SAMPLE_NUMBER), configs.get(SecAggKey.SHARE_NUMBER)
        threshold = configs.get(SecAggKey.THRESHOLD)
        if not all(isinstance(v, int) for v in (sites, shares, threshold)):
            return "the setup does not give the sites, shares and threshold as integers"
        assert isinstance(sites, int) and isinstance(shares, int) and isinstance(threshold, int)
        if not MIN_SITES <= sites <= MAX_SITES:
            return f"the sum would cover {sites} sites; this site needs {MIN_SITES} to {MAX_SITES}"
        if not min(sites, SHARES) <= shares <= sites:
            return f"{shares} sites would share its keys; this site needs {min(sites, SHARES)}"
        if not shares // 2 < threshold <= shares:
            return f"the reconstruction threshold {threshold} is not a majority of {shares}"
        for key, value in EXPECTED.items():
            if configs.get(key) != value:
                return f"{key} = {configs.get(key)!r}; exact sums need {value!r}"
    elif stage == Stage.SHARE_KEYS and len(configs) - 1 < MIN_SITES:
        return f"only {len(configs) - 1} sites share keys; this site needs {MIN_SITES}"
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        sources = configs.get(SecAggKey.SOURCE_LIST)
        if not isinstance(sources, list) or len(sources) + 1 < MIN_SITES:
            return f"fewer than {MIN_SITES} sites remain before the masked vectors"
    elif stage == Stage.UNMASK:
        active = configs.get(SecAggKey.ACTIVE_NODE_ID_LIST)
        if not isinstance(active, list) or len(active) < MIN_SITES:
            return f"the sum would cover fewer than {MIN_SITES} sites; no key share is released"
    return ""


def contribution(bundle: Path, audit_log: Path | None) -> Handler:
    """The handler ``secaggplus_mod`` calls in its masked-vector stage: the site's vector."""

    def handler(message: Message, context: Context) -> Message:
        fitins = recorddict_to_fitins(message.content, keep_input=True)
        request = _request(fitins.config.get(REQUEST_KEY))
        vector, payload = serve_secure(bundle, request, audit_log)
        if vector is None:
            raise SecureRefused(payload)
        fitres = FitRes(
            Status(Code.OK, ""), ndarrays_to_parameters([vector]), 1, {REPLY_KEY: to_text(payload)}
        )
        return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    return handler


def _request(text: Any) -> Any:
    try:
        return json.loads(str(text))
    except ValueError:
        return None


def handle_train(
    message: Message,
    context: Context,
    bundle: Path,
    audit_log: Path | None,
    fallback: Handler | None = None,
) -> Message:
    """A ``train`` message: a SecAgg+ stage (guarded), or the fallback handler's."""
    if not is_secure(message):
        if fallback is None:
            return _error(message, "this site serves no model training (no train handler)")
        return fallback(message, context)
    why = guard(message.content.config_records[RECORD_KEY_CONFIGS])
    if why:
        payload = record_refusal(bundle, audit_log, "secure_aggregation", why)
        return _error(message, refusal_reason(payload))
    try:
        return secaggplus_mod(message, context, contribution(bundle, audit_log))
    except SecureRefused as exc:
        return _error(message, refusal_reason(exc.payload))


def _error(message: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=message)
