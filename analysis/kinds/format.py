"""One notation for every number the console, report and figures print.

Kinds declare values with a format code (:data:`analysis.kinds.base.FORMATS`); the renderers in
``experiments`` call :func:`fmt`. Missing values are ``NA``; a median that is not reached is
``NR``; an interval bound that cannot be estimated is ``NE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "NA"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``NA`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return "NR" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def p_value(value: Any) -> str:
    """A p-value: 4 decimals, ``<0.0001`` below that."""
    if not _finite(value):
        return MISSING
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def percent(value: Any, digits: int = 1) -> str:
    """A proportion as a percentage."""
    return MISSING if not _finite(value) else f"{100 * value:.{digits}f}%"


def time_value(value: Any) -> str:
    """A time: whole numbers without decimals, ``NR`` when not reached."""
    if value is None:
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return "NR"
    if _finite(value) and float(value).is_integer():
        return str(int(value))
    return number(value, 1)


def interval(bounds: Sequence[Any] | None, write: Any = time_value) -> str:
    """``lo to hi`` with each bound written by ``write`` (``NE`` when not estimable)."""
    if not bounds or len(bounds) != 2:
        return MISSING
    parts = [
        "NE" if b is None or (isinstance(b, float) and math.isinf(b)) else write(b) for b in bounds
    ]
    return f"{parts[0]} to {parts[1]}"


def fmt(value: Any, code: str) -> str:
    """``value`` written by format ``code`` (``text``, ``int``, ``num``, ``num1``, ``pct``,
    ``hr``, ``p``, ``time``, ``ci``, ``hr_ci``, ``pct_ci``)."""
    if code == "text":
        return "" if value is None else str(value)
    if code == "int":
        return MISSING if value is None else str(int(value))
    if code in ("num", "hr"):
        return number(value, 3)
    if code == "num1":
        return number(value, 1)
    if code == "pct":
        return percent(value)
    if code == "p":
        return p_value(value)
    if code == "time":
        return time_value(value)
    if code == "ci":
        return interval(value)
    if code == "hr_ci":
        return interval(value, lambda v: number(v, 3))
    if code == "pct_ci":
        return interval(value, percent)
    raise ValueError(f"format must be one of the known codes; got {code!r}")
