"""The three distribution functions the estimators need, from ``scipy.special``.

``scipy.stats`` costs about 0.6 s to import (it builds every distribution object); a coordinator
and every site process would pay it on each run. These are the same special functions
``scipy.stats.norm`` and ``scipy.stats.chi2`` evaluate, so the numbers are bit for bit the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special


def normal_quantile(q: float) -> float:
    """The standard normal quantile at ``q`` (``scipy.stats.norm.ppf``)."""
    return float(special.ndtri(q))


def normal_sf(x: Any) -> Any:
    """The standard normal upper tail ``P(Z > x)`` (``scipy.stats.norm.sf``), elementwise."""
    return special.ndtr(-np.asarray(x, dtype=float))


def chi2_sf(statistic: float, df: float) -> float:
    """The chi-square upper tail ``P(X > statistic)`` on ``df`` degrees of freedom."""
    return float(special.chdtrc(df, statistic))
