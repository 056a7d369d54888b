"""A site's ``[policy]`` table: a strict schema, checked before the site answers anything.

Keys (docs/design.md, "Site policy"):

``allowed_analyses``
    A list of analysis kinds, or ``"any"`` (default). Decided from the kinds of the plan's
    analyses, never from a label in a message.
``min_cell_count``
    k, an integer >= 0 (default 5). No released group, stratum or count covers fewer than k of
    the site's subjects (0 turns the disclosure rules off: results then equal the pooled-rows
    analysis exactly).
``approved_plans``
    A list of plan SHA-256 hashes (``trialfed site approve`` adds one), or ``"any"`` (default,
    reported as a warning by ``trialfed site check``).
``publish_site_estimates``
    Whether the site's own model fits may leave it (default false). Without them the forest plot
    has no row for the site and Cox iterations start from zero.
``approved_apps``
    SHA-256 hashes of Flower app bundles allowed to differ from the site's installed trialfed
    (deployment).
``require_secure_aggregation``
    Refuse plans that do not sum the site's aggregates under secure aggregation (default false).
``require_dp_epsilon_max``
    Refuse model training whose differential-privacy epsilon exceeds this (no limit by default).

An unknown key, a value of the wrong type or a string where a list is meant is an error naming the
key, the nearest valid key and the value: the site fails closed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.kinds import REGISTRY

ANY = "any"
DEFAULT_MIN_CELL_COUNT = 5
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SitePolicy:
    """A validated ``[policy]`` table (see the module docstring for each field)."""

    allowed_analyses: tuple[str, ...] | None = None  # None = any
    min_cell_count: int = DEFAULT_MIN_CELL_COUNT
    approved_plans: tuple[str, ...] | None = None  # None = any
    publish_site_estimates: bool = False
    approved_apps: tuple[str, ...] = ()
    require_secure_aggregation: bool = False
    require_dp_epsilon_max: float | None = None

    def allows(self, kind: str) -> bool:
        """Whether analyses of ``kind`` may be answered."""
        return self.allowed_analyses is None or kind in self.allowed_analyses

    def approves(self, plan_sha256: str) -> bool:
        """Whether a plan with this content hash may be answered."""
        return self.approved_plans is None or plan_sha256 in self.approved_plans

    def public(self) -> dict[str, Any]:
        """What the coordinator is told (the rules it will meet; no secrets in a policy)."""
        return {
            "allowed_analyses": ANY
            if self.allowed_analyses is None
            else list(self.allowed_analyses),
            "min_cell_count": self.min_cell_count,
            "publish_site_estimates": self.publish_site_estimates,
            "require_secure_aggregation": self.require_secure_aggregation,
            "plans_approved": ANY if self.approved_plans is None else len(self.approved_plans),
        }


KEYS = tuple(SitePolicy.__dataclass_fields__)


def _hashes(value: Any, key: str, file: str, allow_any: bool) -> tuple[Any, list[str]]:
    if allow_any and value == ANY:
        return None, []
    what = "a list of SHA-256 hex strings" + (' or "any"' if allow_any else "")
    if not isinstance(value, list):
        return None, [f"{file}: [policy] {key} must be {what}; got {value!r}"]
    bad = [v for v in value if not isinstance(v, str) or not _SHA256.fullmatch(v)]
    if bad:
        return None, [f"{file}: [policy] {key} must be {what}; got {bad[0]!r} in the list"]
    return tuple(value), []


def parse_policy(table: Any, file: str = "site.toml") -> tuple[SitePolicy, list[str]]:
    """Validate a ``[policy]`` table; return the policy and the problems found."""
    if table is None:
        return SitePolicy(), []
    if not isinstance(table, Mapping):
        return SitePolicy(), [f"{file}: [policy] must be a table; got {table!r}"]
    problems: list[str] = []
    for key in table:
        if key not in KEYS:
            near = difflib.get_close_matches(str(key), KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(
                f"{file}: [policy] unknown key {key!r}{hint}; allowed keys: {', '.join(KEYS)}"
            )
    values: dict[str, Any] = {}
    if "allowed_analyses" in table:
        value = table["allowed_analyses"]
        known = tuple(REGISTRY)
        if value == ANY:
            values["allowed_analyses"] = None
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(
                f'{file}: [policy] allowed_analyses must be a list of analysis kinds or "any"; '
                f"got {value!r}"
            )
        else:
            unknown = [v for v in value if v not in known]
            if unknown:
                allowed = "{" + ", ".join(repr(k) for k in sorted(known)) + "}"
                problems.append(
                    f"{file}: [policy] allowed_analyses entries must be in {allowed}; "
                    f"got {unknown[0]!r}"
                )
            else:
                values["allowed_analyses"] = tuple(value)
    if "min_cell_count" in table:
        value = table["min_cell_count"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
            problems.append(
                f"{file}: [policy] min_cell_count must be an integer in [0, 1000]; got {value!r}"
            )
        else:
            values["min_cell_count"] = value
    for key in ("approved_plans", "approved_apps"):
        if key in table:
            parsed, found = _hashes(table[key], key, file, allow_any=key == "approved_plans")
            problems += found
            if not found:
                values[key] = parsed if parsed is not None or key == "approved_plans" else ()
    for key in ("publish_site_estimates", "require_secure_aggregation"):
        if key in table:
            if not isinstance(table[key], bool):
                problems.append(f"{file}: [policy] {key} must be true or false; got {table[key]!r}")
            else:
                values[key] = table[key]
    if "require_dp_epsilon_max" in table:
        value = table["require_dp_epsilon_max"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            problems.append(
                f"{file}: [policy] require_dp_epsilon_max must be a number > 0; got {value!r}"
            )
        else:
            values["require_dp_epsilon_max"] = float(value)
    return SitePolicy(**values), problems


def describe_policy(policy: SitePolicy) -> list[str]:
    """What ``trialfed site check`` prints about the policy, one line each."""
    k = policy.min_cell_count
    lines = [
        f"disclosure rules: min_cell_count = {k}"
        + (" (OFF: exact counts and times leave the site)" if k == 0 else ""),
        "analyses answered: "
        + ("any" if policy.allowed_analyses is None else ", ".join(policy.allowed_analyses)),
        "plans answered: "
        + (
            'any valid plan (approved_plans = "any"; approve plans one by one with '
            "`trialfed site approve DIR PLAN`)"
            if policy.approved_plans is None
            else f"{len(policy.approved_plans)} approved plan(s)"
        ),
        "own estimates published: " + ("yes" if policy.publish_site_estimates else "no"),
    ]
    if policy.require_secure_aggregation:
        lines.append("secure aggregation required")
    return lines
