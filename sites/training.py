"""The site side of federated training: policy, train/test split, aggregates, local rounds.

Three answers, each computed from the site's own bundle and returning parameters, counts and
metrics only, never a row:

- :func:`site_stats`: the training split's feature aggregates (:mod:`models.features`, under the
  site's ``min_cell_count``) and its event table (for the federated censoring KM of Uno's C and
  the Brier score; on the coarser time grid of the disclosure rules, as every event table a site
  sends), with a note of each change the rules made;
- :func:`site_train`: local epochs from the coordinator's weights (:func:`models.task.train_local`);
- :func:`site_evaluate`: train and test loss, and the site halves of Harrell's C, Uno's C and the
  (integrated) Brier score on the test split (:mod:`analysis.metrics`).

Each first checks the site policy (:func:`check_policy`): ``allowed_analyses`` must list
``"train"``, and a ``require_dp_epsilon_max`` must be met by the plan's ``dp`` table (epsilon from
:mod:`analysis.privacy` for the plan's rounds). A refusal is a UserError naming the policy key.

Split: with ``test_flag``, subjects whose flag is ``"Y"`` are the test split; with
``test_fraction``, a subject is in the test split when a SHA-256 hash of its USUBJID, read as a
number in [0, 1), is below the fraction: the same at every run and for every seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis import metrics
from analysis.data import SurvivalData
from analysis.errors import UserError
from analysis.kinds.train import TrainSpec
from analysis.km import event_table
from analysis.plan import Plan, parse_plan
from analysis.privacy import gaussian_epsilon
from analysis.rounds import train_spec_from_plan
from models.features import FeatureEncoder, feature_aggregates, label
from models.nets import build_model
from models.task import SiteData, evaluate_local, get_parameters, set_parameters, site_data
from models.task import train_local as run_epochs
from sites import disclosure
from sites.bundle import SiteBundle

SPLIT_SALT = "trialfed-test-split:"
"""Prefix of the hashed USUBJID (changing it changes every test_fraction split)."""


def check_policy(bundle: SiteBundle, spec: TrainSpec) -> None:
    """Refuse (UserError naming the policy key) unless the site's policy allows this training.

    ``allowed_analyses`` must allow ``train``; ``require_dp_epsilon_max`` needs the plan's ``dp``
    within it; a site that requires secure aggregation refuses training (model updates are not
    summed under secure aggregation); features that are identifiers, dates or too fine at the
    site are refused by the disclosure rules.
    """
    site_id, rules = bundle.site_id, bundle.rules
    if not rules.allows("train"):
        raise UserError(
            f"site {site_id} refuses analysis {spec.name!r}: its policy allowed_analyses "
            f"{list(rules.allowed_analyses or ())} does not include 'train'"
        )
    if rules.require_secure_aggregation:
        raise UserError(
            f"site {site_id} refuses analysis {spec.name!r}: its policy "
            "require_secure_aggregation = true, and training updates are not securely summed"
        )
    problem = disclosure.variables_problem(bundle, spec, (), spec.features)
    if problem:
        raise UserError(f"site {site_id} refuses analysis {spec.name!r}: {problem[1]}")
    limit = rules.require_dp_epsilon_max
    if limit is None:
        return
    if spec.dp is None:
        raise UserError(
            f"site {site_id} refuses analysis {spec.name!r}: its policy require_dp_epsilon_max = "
            f"{limit:g} requires differential privacy, and the plan has no dp table"
        )
    spent = gaussian_epsilon(spec.dp.noise_multiplier, spec.rounds, spec.dp.delta)
    if spent.epsilon > limit:
        raise UserError(
            f"site {site_id} refuses analysis {spec.name!r}: the plan's dp gives epsilon = "
            f"{spent.epsilon:.3g} at delta = {spec.dp.delta:g} after {spec.rounds} rounds, above "
            f"its policy require_dp_epsilon_max = {limit:g}"
        )


def authorize(bundle: SiteBundle, plan_text: str, analysis: str) -> tuple[Plan, TrainSpec]:
    """The plan and its training analysis, once this site's rules allow answering them: the
    plan parsed by the site's own code, approved (``approved_plans``), naming this site if it
    names sites, and the analysis allowed by :func:`check_policy`."""
    plan = parse_plan(plan_text, "the coordinator's plan")
    if not bundle.rules.approves(plan.sha256):
        raise UserError(
            f"site {bundle.site_id} has not approved plan {plan.sha256} (study {plan.study_id})"
        )
    if plan.sites and bundle.site_id not in plan.sites:
        raise UserError(f"plan {plan.study_id} does not name site {bundle.site_id}")
    spec = train_spec_from_plan(plan_text, analysis, "the coordinator's plan")
    check_policy(bundle, spec)
    return plan, spec


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256((SPLIT_SALT + text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def test_mask(data: SurvivalData, spec: TrainSpec) -> NDArray[np.bool_]:
    """True for the rows of the test split (see the module notes)."""
    if spec.test_flag:
        flag = data.column(spec.test_flag)
        return np.asarray([label(v).upper() == "Y" for v in flag], dtype=bool)
    ids = data.column("USUBJID")
    return np.asarray([_unit_hash(str(i)) < spec.test_fraction for i in ids], dtype=bool)


@dataclass(frozen=True)
class Split:
    """A site's rows for one TrainSpec, split."""

    train: SurvivalData
    test: SurvivalData


_SPLITS: dict[tuple[int, str], tuple[SiteBundle, Split]] = {}
_PREPARED: dict[tuple[int, str, str], tuple[SiteBundle, SiteData, SiteData]] = {}


def split(bundle: SiteBundle, spec: TrainSpec) -> Split:
    """The train and test rows of ``spec.param`` (cached per bundle and spec)."""
    key = (id(bundle), repr(spec))
    cached = _SPLITS.get(key)
    if cached is None or cached[0] is not bundle:
        data = bundle.survival_data(spec.param)
        for name in spec.features:
            data.column(name)  # UserError naming the available variables
        test = test_mask(data, spec)
        cached = _SPLITS[key] = (bundle, Split(data.subset(~test), data.subset(test)))
        while len(_SPLITS) > 64:
            _SPLITS.pop(next(iter(_SPLITS)))
    return cached[1]


def _prepared(
    bundle: SiteBundle, spec: TrainSpec, encoder: FeatureEncoder
) -> tuple[SiteData, SiteData]:
    key = (id(bundle), repr(spec), json.dumps(encoder.to_dict(), sort_keys=True))
    cached = _PREPARED.get(key)
    if cached is None or cached[0] is not bundle:
        parts = split(bundle, spec)
        prepared = [
            site_data(
                spec.model, encoder.encode(p.covariates), p.time, p.event, landmark=spec.landmark
            )
            for p in (parts.train, parts.test)
        ]
        cached = _PREPARED[key] = (bundle, prepared[0], prepared[1])
        while len(_PREPARED) > 16:
            _PREPARED.pop(next(iter(_PREPARED)))
    return cached[1], cached[2]


def site_stats(bundle: SiteBundle, spec: TrainSpec) -> dict[str, Any]:
    """Feature aggregates and event table of the training split, with the split's sizes."""
    check_policy(bundle, spec)
    parts = split(bundle, spec)
    if parts.train.n == 0:
        raise UserError(f"site {bundle.site_id}: no training subjects for analysis {spec.name!r}")
    k = bundle.rules.min_cell_count
    features = feature_aggregates(parts.train.covariates, spec.features, k)
    table, notes = disclosure.release_table(
        event_table(parts.train.time, parts.train.event), k, "training split"
    )
    if table is None:
        raise UserError(
            f"site {bundle.site_id}: [disclosure] min_cell_count = {k}: the training split's "
            f"event table of analysis {spec.name!r} cannot be released (too few events or "
            "censorings)"
        )
    notes += [
        {"rule": "min_cell_count", "change": f"feature {name}: {count} level(s) not reported"}
        for name, count in sorted(features["suppressed"].items())
        if count
    ]
    return {
        "site": bundle.site_id,
        "n_train": parts.train.n,
        "n_test": parts.test.n,
        "features": features,
        "event_table": table.to_dict(),
        "disclosure": notes,
    }


def round_seed(seed: int, server_round: int, site_id: str) -> int:
    """The seed of one site's local epochs in one round (from the plan's seed)."""
    digest = hashlib.sha256(f"{seed}:{server_round}:{site_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _model(spec: TrainSpec, encoder: FeatureEncoder, arrays: Sequence[NDArray[Any]]) -> Any:
    model = build_model(spec.model, len(encoder.columns), spec.hidden, spec.seed)
    set_parameters(model, arrays)
    return model


def site_train(
    bundle: SiteBundle,
    spec: TrainSpec,
    encoder: FeatureEncoder,
    arrays: Sequence[NDArray[Any]],
    server_round: int,
    proximal_mu: float = 0.0,
) -> tuple[list[NDArray[np.float64]], dict[str, float]]:
    """Local epochs from the coordinator's ``arrays``; the new arrays and training metrics."""
    check_policy(bundle, spec)
    train, _ = _prepared(bundle, spec, encoder)
    model = _model(spec, encoder, arrays)
    loss = run_epochs(
        model,
        train,
        spec.local_epochs,
        spec.lr,
        round_seed(spec.seed, server_round, bundle.site_id),
        optimizer=spec.optimizer,
        batch_size=spec.batch_size,
        proximal_mu=proximal_mu,
        l2=spec.l2,
    )
    return get_parameters(model), {"n": float(train.n), "local_loss": loss}


def site_evaluate(
    bundle: SiteBundle,
    spec: TrainSpec,
    encoder: FeatureEncoder,
    arrays: Sequence[NDArray[Any]],
    censoring: metrics.CensoringSurvival,
    grid: Sequence[float],
    tau: float,
) -> dict[str, float]:
    """Losses and the site halves of the metrics for the coordinator's ``arrays``."""
    check_policy(bundle, spec)
    train, test = _prepared(bundle, spec, encoder)
    model = _model(spec, encoder, arrays)
    train_loss, train_risk = evaluate_local(model, train)
    test_loss, risk = evaluate_local(model, test)
    out = {
        "n_train": float(train.n),
        "n_test": float(test.x.shape[0]),
        "n_test_loss": float(test.n),
        "events_test": float(test.event.sum()),
        "train_loss": train_loss,
        "test_loss": test_loss,
    }
    parts = {
        "harrell": metrics.harrell_parts(test.time, test.event, risk),
        "uno": metrics.uno_parts(test.time, test.event, risk, censoring, tau=tau),
    }
    if spec.model == "logistic":
        survival = 1.0 / (1.0 + np.exp(risk))  # P(no event by the landmark)
        times: Sequence[float] = [spec.landmark]
        parts["brier"] = metrics.brier_parts(test.time, test.event, survival, times, censoring)
    else:
        survival = metrics.breslow_survival(train.time, train.event, train_risk, risk, grid)
        parts["ibs"] = metrics.brier_parts(test.time, test.event, survival, grid, censoring)
    for name, part in parts.items():
        out[f"{name}_num"] = part.numerator
        out[f"{name}_den"] = part.denominator
    return out
