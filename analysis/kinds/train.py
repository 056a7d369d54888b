"""The ``[[analysis]] kind = "train"`` table of a plan: keys, validation, a frozen TrainSpec.

Example::

    [[analysis]]
    name = "risk"
    kind = "train"
    param = "OS"                        # ADTTE endpoint
    model = "cox-linear"                # cox-linear | deepsurv | logistic
    features = ["AGE", "SEX", "TRT01P"] # ADSL variables
    strategy = "fedadam"                # fedavg | fedprox | fedadam (Flower's strategies)
    rounds = 50
    local_epochs = 1
    lr = 0.01
    seed = 0
    test_flag = "TESTFL"                # ADSL flag, "Y" = held-out test subject
    # or: test_fraction = 0.2           # subjects drawn by a hash of USUBJID
    # optional: proximal_mu (fedprox), server_lr (fedadam), optimizer = "sgd" | "adam",
    # batch_size (0 = full batch), l2, hidden = [32, 16] (deepsurv), landmark (logistic),
    # dp = { clip = 1.0, noise_multiplier = 1.0, delta = 1e-5 }  (fedavg or fedprox only)

Every problem is reported, in the plan's style: ``analysis 'risk': strategy must be one of
{'fedadam', 'fedavg', 'fedprox'}; got 'fedsgd'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from analysis.errors import UserError
from analysis.kinds.base import (
    AnalysisSpec,
    Artifact,
    Column,
    Key,
    Kind,
    Metric,
    Presentation,
    Table,
    register,
)

MODELS = ("cox-linear", "deepsurv", "logistic")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
OPTIMIZERS = ("sgd", "adam")
DP_KEYS = ("clip", "noise_multiplier", "delta")
REQUIRED = ("name", "kind", "param", "model", "features")
OPTIONAL = (
    "strategy",
    "rounds",
    "local_epochs",
    "lr",
    "seed",
    "test_flag",
    "test_fraction",
    "proximal_mu",
    "server_lr",
    "optimizer",
    "batch_size",
    "l2",
    "hidden",
    "landmark",
    "dp",
)
ALLOWED_KEYS = frozenset(REQUIRED + OPTIONAL)
_VARIABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def _one_of(values: tuple[str, ...]) -> str:
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


@dataclass(frozen=True)
class DPSpec:
    """Clipping and noise on the sites' updates (see :mod:`analysis.privacy`)."""

    clip: float
    noise_multiplier: float
    delta: float


@dataclass(frozen=True)
class TrainSpec(AnalysisSpec):
    """One validated ``kind = "train"`` analysis."""

    param: str
    model: str
    features: tuple[str, ...]
    strategy: str = "fedavg"
    rounds: int = 50
    local_epochs: int = 1
    lr: float = 0.01
    seed: int = 0
    test_flag: str = ""
    test_fraction: float = 0.0
    proximal_mu: float = 0.0
    server_lr: float = 0.1
    optimizer: str = "sgd"
    batch_size: int = 0
    l2: float = 0.0
    hidden: tuple[int, ...] = (32, 16)
    landmark: float = 0.0
    dp: DPSpec | None = None

    kind: ClassVar[str] = "train"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for results.json and MLflow params)."""
        return {"kind": self.kind, **asdict(self)}


Check = tuple[Callable[[Any], bool], str]
_INT: Callable[[Any], bool] = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_NUM: Callable[[Any], bool] = lambda v: (  # noqa: E731
    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
)
_NUMBERS: dict[str, Check] = {
    "rounds": (lambda v: _INT(v) and 1 <= v <= 1000, "an integer in [1, 1000]"),
    "local_epochs": (lambda v: _INT(v) and 1 <= v <= 1000, "an integer in [1, 1000]"),
    "lr": (lambda v: _NUM(v) and v > 0, "a number > 0"),
    "seed": (lambda v: _INT(v) and 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "test_fraction": (lambda v: _NUM(v) and 0 < v < 1, "a number in (0, 1)"),
    "proximal_mu": (lambda v: _NUM(v) and v > 0, "a number > 0"),
    "server_lr": (lambda v: _NUM(v) and v > 0, "a number > 0"),
    "batch_size": (lambda v: _INT(v) and v >= 0, "an integer >= 0 (0 = full batch)"),
    "l2": (lambda v: _NUM(v) and v >= 0, "a number >= 0"),
    "landmark": (lambda v: _NUM(v) and v > 0, "a time > 0"),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "strategy": STRATEGIES,
    "optimizer": OPTIMIZERS,
}
_DP: dict[str, Check] = {
    "clip": (lambda v: _NUM(v) and v > 0, "a number > 0"),
    "noise_multiplier": (lambda v: _NUM(v) and v > 0, "a number > 0"),
    "delta": (lambda v: _NUM(v) and 0 < v < 1, "a number in (0, 1)"),
}


def parse_train(table: Mapping[str, Any], problems: list[str]) -> TrainSpec | None:
    """Validate one ``[[analysis]]`` table of kind ``train``; append problems, None if any."""
    name = table.get("name")
    where = f"analysis {name!r}"
    before = len(problems)
    unknown = sorted(set(table) - ALLOWED_KEYS)
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {unknown} for kind 'train'; allowed: {sorted(ALLOWED_KEYS)}"
        )
    missing = [k for k in REQUIRED if k not in table]
    if missing:
        problems.append(f"{where}: missing required key(s) {missing} for kind 'train'")
    if table.get("kind", "train") != "train":
        problems.append(f"{where}: kind must be 'train'; got {table.get('kind')!r}")
    values: dict[str, Any] = {"name": name}
    _choices(table, where, values, problems)
    _numbers(table, where, values, problems)
    _strings(table, where, values, problems)
    _cross_checks(table, where, values, problems)
    if len(problems) > before or missing:
        return None
    return TrainSpec(**values)


def _choices(
    table: Mapping[str, Any], where: str, out: dict[str, Any], problems: list[str]
) -> None:
    for key, allowed in _CHOICES.items():
        if key in table:
            if table[key] in allowed:
                out[key] = table[key]
            else:
                problems.append(
                    f"{where}: {key} must be one of {_one_of(allowed)}; got {table[key]!r}"
                )


def _numbers(
    table: Mapping[str, Any], where: str, out: dict[str, Any], problems: list[str]
) -> None:
    for key, (ok, allowed) in _NUMBERS.items():
        if key in table:
            if ok(table[key]):
                out[key] = table[key]
            else:
                problems.append(f"{where}: {key} must be {allowed}; got {table[key]!r}")
    for key in ("lr", "test_fraction", "proximal_mu", "server_lr", "l2", "landmark"):
        if key in out:
            out[key] = float(out[key])
    if "hidden" in table:
        hidden = table["hidden"]
        if (
            isinstance(hidden, list)
            and hidden
            and len(hidden) <= 8
            and all(_INT(h) and 1 <= h <= 4096 for h in hidden)
        ):
            out["hidden"] = tuple(hidden)
        else:
            problems.append(
                f"{where}: hidden must be a list of 1 to 8 layer widths in [1, 4096]; "
                f"got {hidden!r}"
            )
    if "dp" in table:
        out["dp"] = _dp(table["dp"], where, problems)


def _dp(table: Any, where: str, problems: list[str]) -> DPSpec | None:
    if not isinstance(table, dict):
        problems.append(
            f"{where}: dp must be a table {{ clip = ..., noise_multiplier = ..., delta = ... }}; "
            f"got {table!r}"
        )
        return None
    before = len(problems)
    unknown = sorted(set(table) - set(DP_KEYS))
    missing = [k for k in DP_KEYS if k not in table]
    if unknown or missing:
        problems.append(
            f"{where}: dp needs exactly the keys {list(DP_KEYS)}; "
            f"unknown {unknown}, missing {missing}"
        )
    for key, (ok, allowed) in _DP.items():
        if key in table and not ok(table[key]):
            problems.append(f"{where}: dp.{key} must be {allowed}; got {table[key]!r}")
    if len(problems) > before:
        return None
    return DPSpec(*(float(table[k]) for k in DP_KEYS))


def _strings(
    table: Mapping[str, Any], where: str, out: dict[str, Any], problems: list[str]
) -> None:
    for key in ("param", "test_flag"):
        if key in table:
            value = table[key]
            if isinstance(value, str) and _VARIABLE.match(value):
                out[key] = value
            else:
                problems.append(f"{where}: {key} must be a variable name; got {value!r}")
    if "features" in table:
        features = table["features"]
        if (
            isinstance(features, list)
            and features
            and all(isinstance(f, str) and _VARIABLE.match(f) for f in features)
            and len(set(features)) == len(features)
        ):
            out["features"] = tuple(features)
        else:
            problems.append(
                f"{where}: features must be a list of distinct ADSL variable names (at least one); "
                f"got {features!r}"
            )


def _cross_checks(
    table: Mapping[str, Any], where: str, out: dict[str, Any], problems: list[str]
) -> None:
    strategy = out.get("strategy", "fedavg")
    model = out.get("model", table.get("model"))
    if ("test_flag" in table) == ("test_fraction" in table):
        problems.append(
            f"{where}: exactly one of test_flag (an ADSL flag, 'Y' = test subject) or "
            f"test_fraction (a number in (0, 1)) is required"
        )
    if "proximal_mu" in table and strategy != "fedprox":
        problems.append(
            f"{where}: proximal_mu applies to strategy 'fedprox' only; got {strategy!r}"
        )
    if strategy == "fedprox" and "proximal_mu" not in table:
        problems.append(f"{where}: strategy 'fedprox' needs proximal_mu (a number > 0)")
    if "server_lr" in table and strategy != "fedadam":
        problems.append(f"{where}: server_lr applies to strategy 'fedadam' only; got {strategy!r}")
    if "hidden" in table and model != "deepsurv":
        problems.append(f"{where}: hidden applies to model 'deepsurv' only; got {model!r}")
    if model == "logistic" and "landmark" not in table:
        problems.append(
            f"{where}: model 'logistic' needs landmark (the time of the binary endpoint)"
        )
    if "landmark" in table and model != "logistic":
        problems.append(f"{where}: landmark applies to model 'logistic' only; got {model!r}")
    if "dp" in table and strategy == "fedadam":
        problems.append(
            f"{where}: dp needs strategy 'fedavg' or 'fedprox' (the noise is calibrated to the "
            f"equal-weight mean of clipped updates); got 'fedadam'"
        )


def parse_train_spec(table: Mapping[str, Any], source: str = "<plan>") -> TrainSpec:
    """Validate one train table; UserError listing every problem."""
    problems: list[str] = []
    spec = parse_train(table, problems)
    if spec is None:
        raise UserError(f"{source}: invalid analysis plan:\n  - " + "\n  - ".join(problems))
    return spec


# ---------------------------------------------------------------------------------------------
# The registry entry: parsed by parse_train, run by Flower's strategies (federation.training)
# ---------------------------------------------------------------------------------------------

_SITE_COLUMNS = (
    ("n_test", "N test", "int"),
    ("harrell_c", "Harrell's C", "num"),
    ("uno_c", "Uno's C", "num"),
    ("ibs", "Integrated Brier", "num"),
    ("brier", "Brier at landmark", "num"),
    ("test_loss", "Test loss", "num"),
)


@register
class TrainKind(Kind):
    """Federated training of a torch model (models/) through Flower's strategies."""

    name = "train"
    title = "Federated model training"
    spec = TrainSpec
    keys: ClassVar[Mapping[str, Key]] = {}
    engine = "training"

    def parse(self, table: Mapping[str, Any], where: str, problems: list[str]) -> Any:
        return parse_train(table, problems)

    def dump(self, spec: AnalysisSpec) -> dict[str, Any]:
        assert isinstance(spec, TrainSpec)
        table: dict[str, Any] = {"name": spec.name, "kind": self.name}
        for item in fields(spec):
            value = getattr(spec, item.name)
            if item.name == "name" or value == item.default:
                continue
            if isinstance(value, DPSpec):
                value = asdict(value)
            table[item.name] = list(value) if isinstance(value, tuple) else value
        return table

    def covariates(self, spec: TrainSpec) -> tuple[str, ...]:
        return spec.features

    def present(self, name: str, result: Mapping[str, Any], locale: Any = None) -> Presentation:
        spec = result.get("spec") or {}
        final = result.get("final") or {}
        combined = final.get("combined") or {}
        present = [
            c for c in _SITE_COLUMNS if any(c[0] in v for v in (final.get("sites") or {}).values())
        ]
        columns = (Column("site", "Site"), *(Column(k, label, f) for k, label, f in present))
        rows = [{"site": site, **values} for site, values in (final.get("sites") or {}).items()]
        rows.append({"site": "combined", **combined})
        tables = [
            Table(
                name,
                f"{spec.get('model')} trained with {spec.get('strategy')}: test-set evaluation "
                f"after round {final.get('round')}",
                columns,
                tuple(rows),
                notes=(
                    "combined C-index: concordant over comparable pairs summed across sites "
                    "(within-site pairs); Brier scores weighted by test subjects",
                ),
            )
        ]
        if result.get("coefficients"):
            tables.append(
                Table(
                    f"{name}_coefficients",
                    "Coefficients (on the encoded, scaled features)",
                    (Column("term", "Term"), Column("coef", "Coefficient", "num")),
                    tuple({"term": t, "coef": c} for t, c in result["coefficients"].items()),
                )
            )
        metrics = [
            Metric((key,), value, headline=key in {"harrell_c", "uno_c", "ibs"})
            for key, value in combined.items()
        ]
        for entry in result.get("history") or []:
            for key, value in (entry.get("combined") or {}).items():
                metrics.append(Metric((key,), value, step=int(entry["round"])))
        privacy = result.get("privacy")
        if privacy:
            metrics += [
                Metric(("dp_epsilon",), privacy.get("epsilon"), headline=True),
                Metric(("dp_delta",), privacy.get("delta")),
            ]
        return Presentation(
            heading=(
                f"federated {spec.get('model')} model of {spec.get('param')} on "
                f"{', '.join(spec.get('features') or [])}"
            ),
            lines=tuple(
                [f"{len(result.get('sites') or [])} sites, {spec.get('rounds')} rounds"]
                + (
                    [
                        f"differential privacy: epsilon = {privacy.get('epsilon'):.3g} at delta = "
                        f"{privacy.get('delta'):g}"
                    ]
                    if privacy
                    else []
                )
            ),
            tables=tuple(tables),
            metrics=tuple(metrics),
            artifacts=(Artifact("torch-model", name, dict(result)),),
            params={k: spec.get(k) for k in ("model", "strategy", "rounds", "lr", "seed", "param")},
        )
