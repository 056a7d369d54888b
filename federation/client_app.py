"""The trialfed ClientApp: a site answers aggregate queries about its own bundle.

Deployment: the SuperNode gets the bundle folder through ``--node-config "bundle='/path'"``
(and optionally ``audit-log='/path/audit.jsonl'``; default ``<bundle>/.trialfed/audit.jsonl``).
Simulation: :func:`make_client_app` maps each virtual node's ``partition-id`` to a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from analysis.errors import UserError
from federation.codec import decode, encode
from federation.secure_client import handle_train
from sites.node import serve
from sites.prepared import prefetch


def handle(message: Message, bundle_path: Path, audit_log: Path | None = None) -> Message:
    """Answer one query message; a refusal (bad data, plan or policy) is a normal reply."""
    return Message(
        content=encode(serve(bundle_path, decode(message.content), audit_log)), reply_to=message
    )


def _bundle_from_node_config(context: Context) -> Path:
    bundle = context.node_config.get("bundle")
    if not isinstance(bundle, str) or not bundle:
        raise UserError("this SuperNode has no site bundle: start it with --node-config bundle=...")
    return Path(bundle)


def make_client_app(bundles: Sequence[Path | str] | None = None) -> ClientApp:
    """A ClientApp serving ``bundles[partition-id]`` (simulation) or ``node_config['bundle']``.

    ``query.analysis``: the survival protocol. ``train``: SecAgg+ stage messages of a secure
    sum (:func:`federation.secure_client.handle_train`), any other ``train`` message, and
    ``query.train_stats`` and ``evaluate``: federated model training
    (:mod:`federation.training_client`), imported on first use, so a plan without a ``train``
    analysis never loads torch.
    """
    app = ClientApp()
    paths = [str(Path(b).resolve()) for b in bundles] if bundles else None

    def site(context: Context) -> tuple[Path, Path | None]:
        audit_log = context.node_config.get("audit-log")
        return bundle_for(context), Path(str(audit_log)) if audit_log else None

    def bundle_for(context: Context) -> Path:
        if paths is not None:
            return Path(paths[int(context.node_config["partition-id"])])
        return _bundle_from_node_config(context)

    @app.query("analysis")
    def query(message: Message, context: Context) -> Message:
        return handle(message, *site(context))

    def training(message: Message, context: Context) -> Message:
        from federation.training_client import training_handlers

        return training_handlers(bundle_for)[message.metadata.message_type](message, context)

    @app.train()
    def secure_or_train(message: Message, context: Context) -> Message:
        return handle_train(message, context, *site(context), fallback=training)

    app.query("train_stats")(training)
    app.evaluate()(training)
    return app


def warm_sites(bundles: Sequence[Path | str], slot: int, size: int) -> None:
    """Simulation worker ``slot`` of ``size``: load its sites' bundles before the first query.

    Nothing is answered or audited here; a bundle that fails to load fails again, and is
    reported, when its first query arrives.
    """
    for partition in range(slot, len(bundles), size):
        prefetch(Path(bundles[partition]))


app = make_client_app()
