"""``trialfed site check|audit``: what a hospital's IT team runs against its own bundle."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.errors import UserError
from analysis.terminology import parse_study_levels
from sites.audit import verify
from sites.bundle import SiteBundle, load_bundle, read_site_toml
from sites.encoding import DEFAULT_ENCODING
from sites.node import default_audit_log
from sites.policy import describe_policy


def format_report(bundle: SiteBundle) -> str:
    """The short ``site check`` report: site, subjects, arms, events per parameter."""
    files = ", ".join(bundle.files[k].name for k in ("adsl", "adtte") if k in bundle.files)
    declared = " (declared in site.toml)" if bundle.encoding != DEFAULT_ENCODING else ""
    lines = [
        f"site {bundle.site_id}: {bundle.name} ({bundle.country})",
        f"bundle: {bundle.path} ({files})",
        f"text encoding: {bundle.encoding}{declared}",
    ]
    lines += _terminology_lines(bundle)
    lines += [f"subjects: {len(bundle.adsl)}", "arms (TRT01P):"]
    arms = bundle.adsl["TRT01P"].value_counts(sort=False).sort_index()
    width = max(len(str(arm)) for arm in arms.index)
    lines += [f"  {arm:<{width}}  {count:>5}" for arm, count in arms.items()]
    lines.append("parameters (ADTTE):")
    for paramcd in bundle.params():
        rows = bundle.adtte[bundle.adtte["PARAMCD"] == paramcd]
        events = int((rows["CNSR"] == 0).sum())
        lines.append(
            f"  {paramcd}: {events} events, {len(rows) - events} censored, follow-up "
            f"{rows['AVAL'].min():g} to {rows['AVAL'].max():g} ({rows['PARAM'].iloc[0]})"
        )
    lines.append("policy:")
    lines += [f"  {line}" for line in describe_policy(bundle.rules)]
    status = f"{len(bundle.warnings)} warning(s)" if bundle.warnings else "no warnings"
    lines.append(f"valid: yes, {status}")
    return "\n".join(lines)


def _terminology_lines(bundle: SiteBundle) -> list[str]:
    """What ``terminology.toml`` mapped: ``  SEX: '男' -> 'M' (152 rows), ...``."""
    if "terminology" not in bundle.files:
        return []
    lines = [f"terminology: {bundle.files['terminology'].name}"]
    for variable, table in sorted(bundle.terminology.items()):
        hits = bundle.mapped.get(variable, {})
        shown = ", ".join(
            f"{local!r} -> {level!r} ({hits.get(local, 0)} rows)" for local, level in table.items()
        )
        lines.append(f"  {variable}: {shown}")
    return lines


def study_levels(plan: Path | None) -> Mapping[str, Sequence[str]] | None:
    """The ``[levels]`` of an analysis plan file (over the CDISC defaults), or ``None``."""
    if plan is None:
        return None
    try:
        document = tomllib.loads(plan.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{plan}: cannot be read as a TOML analysis plan: {exc}") from None
    problems: list[str] = []
    levels = parse_study_levels(document.get("levels"), problems)
    if problems:
        raise UserError(f"{plan}: " + "; ".join(problems))
    return levels


def main_check(args: argparse.Namespace) -> int:
    """``trialfed site check BUNDLE [--quiet] [--plan PLAN]``: validate and report; 0 when valid.

    The report goes to stdout (not with ``--quiet``), warnings to stderr; an invalid bundle
    raises UserError, which the CLI turns into exit status 2. With ``--plan``, values are
    checked against the plan's ``[levels]`` (else the CDISC controlled terminology).
    """
    bundle = load_bundle(args.bundle, study_levels(getattr(args, "plan", None)))
    if not getattr(args, "quiet", False):
        print(format_report(bundle))
    for warning in bundle.warnings:
        print(f"trialfed: warning: {warning}", file=sys.stderr)
    return 0


def main_audit(args: argparse.Namespace) -> int:
    """``trialfed site audit BUNDLE [--log FILE] [--against RESULTS]``: verify the hash chain
    (and that the log still holds the entry a run's results.json recorded); 1 when broken."""
    path = args.log or default_audit_log(args.bundle)
    against = None
    if getattr(args, "against", None):
        against = _recorded_stamp(args.bundle, args.against)
    report = verify(path, against=against)
    if not report.ok:
        print(f"trialfed: audit log {path} FAILED verification: {report.problem}", file=sys.stderr)
        return 1
    line = f"audit log {path}: {report.entries} entries, hash chain intact"
    if against:
        line += f"; entry {against['entries']} is the one {args.against} recorded"
    print(line)
    return 0


def _recorded_stamp(bundle: Path, results_path: Path) -> dict[str, Any]:
    """The audit stamp a results.json recorded for this bundle's site."""
    site, problems = read_site_toml(Path(bundle) / "site.toml")
    if problems:
        raise UserError("; ".join(problems))
    try:
        results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{results_path}: cannot read results: {exc}") from None
    for entry in [*results.get("sites", []), *results.get("sites_missing", [])]:
        if entry.get("id") == site["id"] and entry.get("audit"):
            return dict(entry["audit"])
    raise UserError(f"{results_path}: no audit record for site {site['id']!r}")
