"""The torch models: linear Cox, DeepSurv-style MLP, logistic; all float64, all deterministic.

Every model maps an encoded design matrix (n, p) to one score per row, a log-hazard ratio (Cox
models) or a log-odds (logistic); higher means an earlier event. Linear models start at zero (the
Newton start of :mod:`analysis.cox`); the MLP's initial weights come from ``seed`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

KINDS = ("cox-linear", "deepsurv", "logistic")
DTYPE = torch.float64


class CoxLinear(nn.Module):
    """Linear predictor ``x @ beta`` without intercept (the Cox baseline absorbs it)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1, bias=False, dtype=DTYPE)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One score per row, shape (n,)."""
        return self.linear(x).squeeze(-1)


class DeepSurv(nn.Module):
    """DeepSurv-style network (Katzman et al. 2018): ReLU MLP, linear output without bias."""

    def __init__(self, n_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h, dtype=DTYPE), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1, bias=False, dtype=DTYPE))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One score per row, shape (n,)."""
        return self.net(x).squeeze(-1)


class Logistic(nn.Module):
    """Logistic regression: log-odds ``b0 + x @ beta`` of an event by the landmark time."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1, bias=True, dtype=DTYPE)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One log-odds per row, shape (n,)."""
        return self.linear(x).squeeze(-1)


def build_model(
    kind: str, n_features: int, hidden: Sequence[int] = (32, 16), seed: int = 0
) -> nn.Module:
    """A fresh model of ``kind``; the same arguments give the same initial weights.

    Raises
    ------
    ValueError
        For a kind outside :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {set(KINDS)}; got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "cox-linear":
            return CoxLinear(n_features)
        if kind == "deepsurv":
            return DeepSurv(n_features, hidden)
        return Logistic(n_features)
