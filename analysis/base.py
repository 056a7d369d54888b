"""Helpers shared by the estimators: canonical group labels and JSON-safe conversion.

Group labels
------------
Every place that turns a column value into a group key (KM and log-rank groups, Table 1 arms and
sex levels) uses :func:`format_level`, so that a key computed at one site equals the key computed
at another site, and the keys in ``results.json`` are predictable:

- numeric values (float64 after :class:`analysis.SurvivalData` normalisation): integral values are
  written without a fractional part (``1.0 -> "1"``, ``-3.0 -> "-3"``, ``-0.0 -> "0"``); other
  finite values are written with ``repr`` of the Python float, the shortest string that reads back
  to the same double (``2.5 -> "2.5"``, ``0.1 -> "0.1"``, ``1e-07 -> "1e-07"``); infinities are
  ``"inf"`` and ``"-inf"``;
- strings are used as they are (no stripping or case folding: the bundle loader normalises them);
- other objects are written with ``str``, booleans as ``"True"``/``"False"``;
- missing values (``None``, float NaN, ``pandas.NA``/``NaT``) become the empty string ``""``; SAS
  transport files write missing character values as blanks, so this is the same level a site
  reading XPT gets anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

MISSING_LEVEL = ""


def format_level(value: Any) -> str:
    """Canonical string for one group value (see the module docstring for the rules).

    Parameters
    ----------
    value : object
        A scalar taken from a covariate column.

    Returns
    -------
    str
        The group label.
    """
    if value is None:
        return MISSING_LEVEL
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        x = float(value)
        if math.isnan(x):
            return MISSING_LEVEL
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x.is_integer():
            return str(int(x))
        return repr(x)
    try:  # pandas.NA / NaT and other "missing" scalars compare unequal to themselves or raise
        if value != value:
            return MISSING_LEVEL
    except (TypeError, ValueError):
        return MISSING_LEVEL
    return str(value)


def factorize_labels(column: NDArray[Any]) -> tuple[list[str], NDArray[np.intp]]:
    """Canonical labels of a column and the code of each row.

    Parameters
    ----------
    column : ndarray, shape (n,)
        Numeric or object column.

    Returns
    -------
    labels : list of str
        Distinct labels, sorted (Python string order).
    codes : ndarray of intp, shape (n,)
        ``labels[codes[i]]`` is the label of row ``i``.

    Notes
    -----
    Numeric columns: ``numpy.unique`` on the values, then only the distinct values are formatted.
    Object columns: levels are found by one vectorised equality test per distinct value (see
    ``_peel``) and only those values are formatted. Distinct raw values that share a label
    (``None`` and NaN, say) share a code.
    """
    column = np.asarray(column)
    if column.ndim != 1:
        raise ValueError(f"a grouping column must be 1-d; got shape {column.shape}")
    if column.dtype.kind == "f":
        column = column + 0.0  # -0.0 -> 0.0
        missing = np.isnan(column)
        uniq, inverse = np.unique(column[~missing], return_inverse=True)
        raw_labels = [format_level(float(v)) for v in uniq]
        if missing.any():
            raw_labels.append(MISSING_LEVEL)
            full = np.full(column.shape, len(uniq), dtype=np.intp)
            full[~missing] = inverse.reshape(-1)
            inverse = full
    else:
        raw_labels, inverse = _peel(column.astype(object))
    labels, relabel = np.unique(np.asarray(raw_labels, dtype=object), return_inverse=True)
    codes = relabel[np.asarray(inverse).reshape(-1)].astype(np.intp)
    return [str(v) for v in labels], codes


def _peel(column: NDArray[Any], max_levels: int = 64) -> tuple[list[str], NDArray[np.intp]]:
    """Labels of an object column and row codes, without sorting Python objects.

    Grouping columns have few levels, so one vectorised equality test per distinct value (a C
    loop) beats ``numpy.unique`` on objects (a sort with a Python comparison per step). Values
    that do not compare equal to themselves (NaN) and anything past ``max_levels`` distinct
    values are formatted row by row and then sorted.
    """
    codes = np.empty(column.shape, dtype=np.intp)
    found: list[str] = []
    rows = np.arange(column.size)
    rest = column
    try:
        while rest.size and len(found) < max_levels:
            value = rest[0]
            same = np.asarray(rest == value, dtype=bool).reshape(rest.shape)
            same[0] = True  # NaN != NaN: make progress anyway
            codes[rows[same]] = len(found)
            found.append(format_level(value))
            rows, rest = rows[~same], rest[~same]
    except (TypeError, ValueError):  # e.g. pandas.NA, whose comparisons are not booleans
        pass
    if rest.size:
        formatted = np.frompyfunc(format_level, 1, 1)(rest)
        uniq, inverse = np.unique(np.asarray(formatted, dtype=object), return_inverse=True)
        codes[rows] = len(found) + np.asarray(inverse).reshape(-1)
        found.extend(str(v) for v in uniq)
    return found, codes


def json_safe(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays to Python objects, NaN and infinities to None.

    Parameters
    ----------
    value : object
        Nested mappings, sequences, numpy arrays and scalars.

    Returns
    -------
    object
        Plain ``dict``/``list``/``int``/``float``/``str``/``bool``/``None``, ready for
        ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":  # vectorised: results hold arrays of 1e6 times
            out = value.astype(object)
            out[~np.isfinite(value)] = None
            return list(out.tolist())
        if value.dtype.kind in "biu":
            return list(value.tolist())
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        x = float(value)
        return x if math.isfinite(x) else None
    return value


def frozen_array(values: Any, dtype: type | np.dtype[Any]) -> NDArray[Any]:
    """A read-only 1-d copy of ``values`` as ``dtype`` (for frozen result objects)."""
    array = np.array(values, dtype=dtype).reshape(-1)
    array.flags.writeable = False
    return array
