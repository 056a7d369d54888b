"""``trialfed site approve BUNDLE PLAN``: show a hospital what a plan would take from its data,
then add the plan's hash to the site's ``approved_plans``.

The preview is computed by the site's own handler on its own data (round 1 exactly as it would
answer it, nothing sent, nothing audited), so it shows what each analysis would release under
the site's rules: the aggregates, how many numbers, what the disclosure rules change, and what
the site would refuse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tomlkit

from analysis.errors import UserError
from analysis.kinds import REGISTRY
from analysis.plan import Plan
from analysis.rounds import plan_models, round_one_queries, train_spec_from_plan
from experiments.plan import load_plan
from sites.answers import answer
from sites.audit import count_numbers
from sites.bundle import SiteBundle, load_bundle
from sites.evaluations import MAX_SCALED_COEF, MAX_SCALED_STEP

_OPS = {
    "summary": "Table 1 sums by {by}: per group N, age sum and sum of squares, sex counts, "
    "events and censored per endpoint",
    "event_table": "event and censoring counts of {param} by {by}, per time",
    "cox_local": "model {model}: levels of its categorical covariates, N, events, column means"
    "{fit}",
}


def preview(bundle: SiteBundle, plan: Plan) -> list[str]:
    """What the plan would compute at this site and what would leave it, one line each."""
    k = bundle.rules.min_cell_count
    request = {
        "protocol": 2,
        "plan": plan.text or plan.to_toml(),
        "plan_sha256": plan.sha256,
        "round": 1,
        "state": {},
    }
    # The site's own handler on its own data (round 1 writes no evaluation log; nothing is
    # audited because nothing leaves).
    work = answer(bundle, request, Path(bundle.path) / ".trialfed", previewing=True)
    lines = [
        f"plan {plan.sha256} (study {plan.study_id}: {plan.title})",
        f"site {bundle.site_id} ({bundle.country}), min_cell_count = {k}"
        + (" (disclosure rules OFF)" if k == 0 else ""),
        "round 1 would release:",
    ]
    fit = ", and the site's own fit" if bundle.rules.publish_site_estimates else ""
    for query in round_one_queries(plan):
        what = _OPS[query.op].format(
            by=", ".join(query.by) or "nothing (one group)",
            param=query.param,
            model=query.model,
            fit=fit,
        )
        if query.analysis in work.refused:
            why = work.refused[query.analysis]
            lines.append(f"  [{query.analysis}] REFUSED ({why['rule']}): {why['message']}")
            continue
        numbers = count_numbers(work.answers.get(query.id, {}))
        lines.append(f"  [{query.analysis}] {what}: {numbers} numbers")
    for note in work.notes:
        lines.append(f"    {note['analysis']}: {note['rule']}: {note['change']}")
    models = plan_models(plan)
    if models:
        lines.append(
            f"later rounds (at most {plan.run.max_rounds - 1}): for each Cox model, the score, "
            "information and log-likelihood (site-stratified baseline) or risk-set moments on "
            "the released event times (shared baseline) at the coordinator's coefficients"
        )
        if k > 0:
            lines.append(
                f"  coefficients accepted: |coef x SD| <= {MAX_SCALED_COEF:g}, steps of at most "
                f"{MAX_SCALED_STEP:g} (scaled) from a point already evaluated, zero or the "
                f"site's own fit; at most {plan.run.max_rounds} points per model"
            )
        for model in models:
            lines.append(f"  model {model.id}: {', '.join(model.covariates)}; mode {model.mode}")
    training = training_preview(bundle, plan)
    if plan.run.secure_aggregation:
        lines.append(
            "secure aggregation: round 1 releases only level names, endpoint names, the end of "
            "this site's follow-up rounded up to 100 time units and published fits (the counts "
            "above); every later analysis round is one vector summed under SecAgg+ with at least "
            "2 other sites, so the coordinator sees only totals, and the site's small-cell rules "
            "apply to the pooled totals instead"
            + ("; training (below) is NOT securely summed" if training else "")
        )
    lines += training
    kinds = sorted({REGISTRY[a.kind].name for a in plan.analyses})
    lines.append(f"analysis kinds: {', '.join(kinds)}")
    return lines


def training_preview(bundle: SiteBundle, plan: Plan) -> list[str]:
    """What each ``train`` analysis would take: the statistics round as the site's own handler
    computes it on its data (nothing sent), then what every training round sends."""
    trained = [a for a in plan.analyses if REGISTRY[a.kind].engine == "training"]
    if not trained:
        return []
    from sites.training import site_stats  # torch: only for plans that train

    lines = ["training (after the rounds above):"]
    for spec in trained:
        train = train_spec_from_plan(plan.text or plan.to_toml(), spec.name, "the plan")
        try:
            stats = site_stats(bundle, train)
        except UserError as exc:
            lines.append(f"  [{spec.name}] REFUSED: {exc}")
            continue
        features = ", ".join(train.features)
        times = len(stats["event_table"]["time"])
        lines.append(
            f"  [{spec.name}] statistics: training and test split sizes "
            f"({stats['n_train']} / {stats['n_test']}), per feature ({features}) N, sum and "
            "sum of squares or subjects per level, and the training split's event and "
            f"censoring counts of {train.param} at {times} times: {count_numbers(stats)} numbers"
        )
        for note in stats["disclosure"]:
            lines.append(f"    {spec.name}: {note['rule']}: {note['change']}")
        dp = (
            f", clipped and noised (noise multiplier {train.dp.noise_multiplier:g})"
            if train.dp
            else ""
        )
        lines.append(
            f"  [{spec.name}] each of {train.rounds} rounds ({train.strategy}, model "
            f"{train.model}): the model's weights after {train.local_epochs} local epoch(s) on "
            f"the training split{dp}, then train and test loss and the site's parts of "
            "Harrell's and Uno's C and the Brier score on its test split"
        )
    return lines


def record_approval(site_toml: Path, plan_sha256: str) -> bool:
    """Add ``plan_sha256`` to ``[policy] approved_plans`` (comments kept); False if present."""
    document = tomlkit.parse(site_toml.read_text(encoding="utf-8"))
    policy = document.get("policy")
    if policy is None:
        policy = tomlkit.table()
        document["policy"] = policy
    current = policy.get("approved_plans")
    if isinstance(current, list) and plan_sha256 in current:
        return False
    if not isinstance(current, list):  # absent or "any": from now on only approved plans
        policy["approved_plans"] = tomlkit.array()
    policy["approved_plans"].append(plan_sha256)
    site_toml.write_text(tomlkit.dumps(document), encoding="utf-8")
    return True


def main_approve(args: argparse.Namespace) -> int:
    """Entry point of ``trialfed site approve``."""
    bundle = load_bundle(args.bundle)
    plan = load_plan(args.plan)
    if not getattr(args, "quiet", False):
        for line in preview(bundle, plan):
            print(line)
    if getattr(args, "dry_run", False):
        print("dry run: approved_plans not changed")
        return 0
    was_any = bundle.rules.approved_plans is None
    if not record_approval(Path(args.bundle) / "site.toml", plan.sha256):
        print(f"plan {plan.sha256} was already approved")
        return 0
    load_bundle(args.bundle)  # the edited site.toml must still be a valid bundle
    note = ' (approved_plans was "any": this site now answers approved plans only)'
    where = Path(args.bundle) / "site.toml"
    print(f"approved plan {plan.sha256} in {where}{note if was_any else ''}")
    return 0
