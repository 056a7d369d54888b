"""Losses computed from one site's own rows only.

Cox: the negative partial log-likelihood with Breslow ties over the site's own risk sets, divided
by the site's number of rows. Summed over sites with weights ``n_site / N`` (FedAvg's weights) it
is the site-stratified Cox likelihood of the pooled rows divided by N, so no row from elsewhere is
needed. Stable: ``log sum exp`` over each risk set is a ``logcumsumexp`` over rows sorted by
descending time, read at the last row of each group of tied times.

Logistic (landmark L): label 1 for an event at or before L, 0 for a time after L; subjects
censored at or before L are left out (their status at L is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch.nn import functional


@dataclass(frozen=True)
class RiskSets:
    """Rows sorted by descending time and, for each, the end of its group of tied times.

    Attributes
    ----------
    order : LongTensor (n,)
        Row indices by descending time.
    last : LongTensor (n,)
        For sorted row k, the sorted index of the last row with the same time: the logcumsumexp
        there covers every row with time >= t_k (Breslow's risk set).
    event : Tensor (n,) float64
        Event indicator in sorted order.
    """

    order: torch.Tensor
    last: torch.Tensor
    event: torch.Tensor

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.order.shape[0])


def risk_sets(time: ArrayLike, event: ArrayLike) -> RiskSets:
    """Precompute the sort and tie structure of one site's rows (numpy; done once)."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=bool).reshape(-1)
    order = np.lexsort((np.arange(t.size), -t))  # descending time, stable
    ts = t[order]
    # last index of each run of equal times in the descending order
    boundary = np.r_[ts[1:] != ts[:-1], True]
    ends = np.flatnonzero(boundary)
    last = ends[np.searchsorted(ends, np.arange(t.size), side="left")]
    return RiskSets(
        order=torch.as_tensor(order, dtype=torch.long),
        last=torch.as_tensor(last, dtype=torch.long),
        event=torch.as_tensor(e[order], dtype=torch.float64),
    )


def cox_nll(score: torch.Tensor, sets: RiskSets) -> torch.Tensor:
    """Breslow negative partial log-likelihood of ``score`` over ``sets``, divided by n."""
    if sets.n == 0:
        return score.sum() * 0.0
    s = score[sets.order]
    log_risk = torch.logcumsumexp(s, dim=0)[sets.last]
    return -((s - log_risk) * sets.event).sum() / sets.n


@dataclass(frozen=True)
class LandmarkLabels:
    """Binary labels at a landmark time and the rows that have one."""

    rows: NDArray[np.intp]
    label: torch.Tensor

    @property
    def n(self) -> int:
        """Rows with a label."""
        return int(self.rows.shape[0])


def landmark_labels(time: ArrayLike, event: ArrayLike, landmark: float) -> LandmarkLabels:
    """Labels of the logistic model (see the module notes)."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=bool).reshape(-1)
    known = (t > landmark) | e
    rows = np.flatnonzero(known)
    y = (e & (t <= landmark))[rows]
    return LandmarkLabels(rows=rows, label=torch.as_tensor(y, dtype=torch.float64))


def bce(score: torch.Tensor, labels: LandmarkLabels) -> torch.Tensor:
    """Mean binary cross-entropy of log-odds ``score`` (all rows) on the labelled rows."""
    if labels.n == 0:
        return score.sum() * 0.0
    rows = torch.as_tensor(labels.rows, dtype=torch.long)
    return functional.binary_cross_entropy_with_logits(score[rows], labels.label)
