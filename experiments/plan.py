"""Reading analysis plan files; the plan model is :mod:`analysis.plan` (sites parse it too)."""

from __future__ import annotations

from pathlib import Path

from analysis.errors import UserError
from analysis.plan import Plan, parse_plan


def load_plan(path: Path) -> Plan:
    """Read and validate a plan file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: plan file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read plan: {exc}") from None
    return parse_plan(text, source=str(path))
