"""One notation for every number the console, report and figures print, in every language.

Kinds declare values with a format code (:data:`analysis.kinds.base.FORMATS`); the renderers in
``experiments`` call :meth:`Locale.fmt` (or :func:`fmt`, the English default). The notation is the
same in English, Japanese and Korean, as PMDA and MFDS tables write it:

- a missing value is ``NA``; a median not reached is ``NR``; a bound that cannot be estimated
  is ``NE``;
- an estimate with its interval is ``0.25 (0.17, 0.37)``; an interval alone ``(0.17, 0.37)``;
- p-values have 3 decimals, ``<0.001`` below (``p < 0.001`` in a sentence);
- hazard ratios 2 decimals, percentages 1, counts with thousands separators (``3,000``);
- times in whole units where they are whole (``296``), else 1 decimal;
- dates ``3 Dec 2026`` / ``2026年12月3日`` / ``2026년 12월 3일``.

:class:`Locale` adds the words: the message catalogue (:mod:`analysis.kinds.messages`) and the
study's own names (endpoint labels from ADaM ``PARAM``, reference levels, site names).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from analysis.kinds import messages

LANGUAGES = ("en", "ja", "ko")
MISSING = "NA"
NOT_REACHED = "NR"
NOT_ESTIMABLE = "NE"
ARM_PATTERN = re.compile(r"^(TRT\d\d[PA]|TRT[PA]|ARM|ACTARM|ARMCD|ACTARMCD)$")
"""ADaM treatment variables: a model term of one of these is a treatment effect."""
REFERENCE_WORDS = re.compile(r"placebo|control|standard of care|\bsoc\b|reference", re.I)
"""Arm levels that read as the reference arm when no plan names one."""
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TERM = re.compile(r"^(?P<var>[^\[\]:]+)\[(?:T\.)?(?P<level>[^\]]*)\]$")
_UNIT_IN_LABEL = re.compile(
    r"^(?P<label>.*?)\s*\((?P<unit>days?|weeks?|months?|years?)\)\s*$", re.I
)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``NA`` when missing, ``NE`` when infinite."""
    if _missing(value):
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return NOT_ESTIMABLE
    return f"{float(value):,.{digits}f}"


def integer(value: Any) -> str:
    """A count with thousands separators (``3,000``)."""
    if not _finite(value):
        return MISSING
    return f"{int(value):,}"


def p_value(value: Any) -> str:
    """A p-value: 3 decimals, ``<0.001`` below."""
    if not _finite(value):
        return MISSING
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def p_text(value: Any) -> str:
    """A p-value in a sentence: ``p = 0.052`` or ``p < 0.001``."""
    text = p_value(value)
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def percent(value: Any, digits: int = 1) -> str:
    """A proportion as a percentage (``74.7%``)."""
    return MISSING if not _finite(value) else f"{100 * value:.{digits}f}%"


def time_value(value: Any) -> str:
    """A time: whole numbers without decimals, ``NR`` when not reached (infinite)."""
    if _missing(value):
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return NOT_REACHED
    if _finite(value) and float(value).is_integer():
        return f"{int(value):,}"
    return number(value, 1)


def hazard_ratio(value: Any) -> str:
    """A hazard ratio: 2 decimals."""
    return number(value, 2)


def _bound(value: Any, write: Callable[[Any], str]) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_ESTIMABLE
    return write(value)


def interval(bounds: Sequence[Any] | None, write: Callable[[Any], str] = time_value) -> str:
    """``(lo, hi)`` with each bound written by ``write`` (``NE`` when not estimable)."""
    if not bounds or len(bounds) != 2:
        return MISSING
    return f"({_bound(bounds[0], write)}, {_bound(bounds[1], write)})"


def estimate(values: Sequence[Any] | None, write: Callable[[Any], str]) -> str:
    """``estimate (lo, hi)`` from ``[estimate, lo, hi]``; a median that is missing is ``NR``."""
    if not values or len(values) != 3:
        return MISSING
    head = values[0]
    # a missing median is one the curve never reached
    text = NOT_REACHED if head is None and write is time_value else _bound(head, write)
    return f"{text} {interval(values[1:], write)}"


_WRITERS: dict[str, Callable[[Any], str]] = {
    "int": integer,
    "num": lambda v: number(v, 3),
    "num1": lambda v: number(v, 1),
    "hr": hazard_ratio,
    "pct": percent,
    "p": p_value,
    "time": time_value,
    "ci": interval,
    "hr_ci": lambda v: interval(v, hazard_ratio),
    "pct_ci": lambda v: interval(v, percent),
    "est_time": lambda v: estimate(v, time_value),
    "est_hr": lambda v: estimate(v, hazard_ratio),
    "est_pct": lambda v: estimate(v, percent),
}


def fmt(value: Any, code: str) -> str:
    """``value`` written by format ``code`` (see :data:`analysis.kinds.base.FORMATS`)."""
    if code == "text":
        return "" if value is None else str(value)
    try:
        write = _WRITERS[code]
    except KeyError:
        allowed = ", ".join(sorted(["text", *_WRITERS]))
        raise ValueError(f"format must be one of {{{allowed}}}; got {code!r}") from None
    return write(value)


def split_param_label(label: str) -> tuple[str, str]:
    """``"Overall survival (days)"`` -> ``("Overall survival", "days")``; no unit -> ``""``."""
    match = _UNIT_IN_LABEL.match(label or "")
    if not match:
        return label, ""
    unit = match["unit"].lower()
    return match["label"], unit if unit.endswith("s") else unit + "s"


def parse_term(term: str) -> tuple[str, str | None]:
    """A model term as (variable, level): ``TRT01P[T.Vaccine]`` -> (``TRT01P``, ``Vaccine``);
    a numeric covariate ``AGE`` -> (``AGE``, None)."""
    match = _TERM.match(term)
    return (match["var"], match["level"]) if match else (term, None)


@dataclass(frozen=True)
class Locale:
    """The words and number formats of one report language, with the study's own names.

    Attributes
    ----------
    lang : str
        ``en``, ``ja`` or ``ko``.
    params : mapping of str to (str, str)
        PARAMCD -> (label, time unit) as the sites' ADaM ``PARAM`` (and ``AVALU``) give them.
    references : mapping of str to str
        Variable -> reference level, from the plan.
    sites : mapping of str to str
        Site id -> site name.
    time_unit : str
        Fallback time unit when an endpoint's label names none (``days``, ``weeks``, ...).
    """

    lang: str = "en"
    params: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)
    sites: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = ""

    def __post_init__(self) -> None:
        if self.lang not in LANGUAGES:
            raise ValueError(f"lang must be one of {set(LANGUAGES)}; got {self.lang!r}")

    # -- words ------------------------------------------------------------------------------

    def t(self, key: str, **args: Any) -> str:
        """Message ``key`` in this language, with ``args`` filled in."""
        return messages.text(key, self.lang).format(**args)

    def var(self, name: str) -> str:
        """A variable's label (``TRT01P`` -> ``Planned treatment``); unknown names as they are."""
        return messages.variable(name, self.lang) or name

    def level(self, var: str, value: Any) -> str:
        """A level's label (``SEX = M`` -> ``Male``, ``COUNTRY = JP`` -> ``Japan``)."""
        return messages.level(var, str(value), self.lang) or str(value)

    def param(self, code: str) -> str:
        """An endpoint's label (ADaM ``PARAM`` without its unit); the code when unknown."""
        label = (self.params.get(code) or ("", ""))[0]
        return label or code

    def unit(self, code: str = "") -> str:
        """The time unit of an endpoint, in words (``days``, ``日``, ``일``); ``""`` unknown."""
        unit = (self.params.get(code) or ("", ""))[1] or self.time_unit
        return self.t(f"unit.{unit}") if unit and messages.has(f"unit.{unit}") else unit

    def site(self, site_id: str) -> str:
        """``JP01 (Osaka University Hospital)`` or the id alone."""
        name = self.sites.get(site_id)
        return f"{site_id} ({name})" if name else site_id

    def reference(self, var: str, levels: Sequence[str] = ()) -> str | None:
        """The reference level of ``var``: the plan's, else a level that reads as one."""
        if var in self.references:
            return self.references[var]
        found = [lv for lv in levels if REFERENCE_WORDS.search(str(lv))]
        return found[0] if len(found) == 1 else None

    def term(self, term: str) -> str:
        """A model term in words: ``Vaccine vs Placebo``, ``Sex: Male vs Female``, ``Age``."""
        var, level = parse_term(term)
        if ":" in term and level is None:
            return " × ".join(self.term(part) for part in term.split(":"))
        if level is None:
            return self.var(var)
        ref = self.references.get(var)
        versus = self.t("versus", a=self.level(var, level), b=self.level(var, ref)) if ref else ""
        if is_arm(var):
            return versus or self.level(var, level)
        return self.t("term.level", var=self.var(var), level=versus or self.level(var, level))

    # -- numbers ----------------------------------------------------------------------------

    def fmt(self, value: Any, code: str) -> str:
        """``value`` written by format ``code`` (the notation is the same in every language)."""
        return fmt(value, code)

    def p(self, value: Any) -> str:
        """``p = 0.052`` / ``p < 0.001``."""
        return p_text(value)

    def date(self, value: str | date | None) -> str:
        """An ISO date in this language's form; ``NA`` when missing or unreadable."""
        if value is None or value == "":
            return MISSING
        try:
            day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        except ValueError:
            return str(value)
        if self.lang == "ja":
            return f"{day.year}年{day.month}月{day.day}日"
        if self.lang == "ko":
            return f"{day.year}년 {day.month}월 {day.day}일"
        return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def is_arm(var: str) -> bool:
    """``var`` is an ADaM treatment variable (its terms are treatment effects)."""
    return bool(ARM_PATTERN.match(var))


ENGLISH = Locale()
"""The default locale (English, no study names)."""
