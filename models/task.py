"""Training task code, the same locally and at a federated site.

:func:`site_data` prepares one site's encoded rows once; :func:`train_local` runs local epochs
of full-batch or mini-batch optimisation (with an optional FedProx proximal term and L2 penalty);
:func:`evaluate_local` returns the loss and the risk scores; :func:`get_parameters` and
:func:`set_parameters` move weights as numpy arrays (what Flower's ArrayRecord carries).

Deterministic: every random choice (mini-batch order) comes from a ``torch.Generator`` seeded by
the caller, training runs with ``torch.use_deterministic_algorithms(True)`` on one thread, and
all arithmetic is float64. The same inputs give bit-for-bit the same parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from models.losses import LandmarkLabels, RiskSets, bce, cox_nll, landmark_labels, risk_sets
from models.nets import DTYPE

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class SiteData:
    """One site's encoded rows for one model kind.

    Attributes
    ----------
    x : Tensor (n, p) float64
    time, event : ndarray (n,)
    kind : str
        ``"cox-linear"``, ``"deepsurv"`` or ``"logistic"``.
    sets : RiskSets or None
        Cox models: the site's risk sets.
    labels : LandmarkLabels or None
        Logistic model: labels at the landmark.
    """

    x: torch.Tensor
    time: NDArray[np.float64]
    event: NDArray[np.bool_]
    kind: str
    sets: RiskSets | None = None
    labels: LandmarkLabels | None = None

    @property
    def n(self) -> int:
        """Rows that enter the loss (FedAvg's weight): all for Cox, the labelled for logistic."""
        if self.labels is not None:
            return self.labels.n
        return int(self.x.shape[0])


def site_data(
    kind: str, x: ArrayLike, time: ArrayLike, event: ArrayLike, landmark: float = 0.0
) -> SiteData:
    """Encoded design matrix ``x`` and outcomes as a :class:`SiteData` of model ``kind``."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event, dtype=bool).reshape(-1)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(t.size, -1), dtype=DTYPE)
    if kind == "logistic":
        return SiteData(xt, t, e, kind, labels=landmark_labels(t, e, landmark))
    return SiteData(xt, t, e, kind, sets=risk_sets(t, e))


def data_loss(model: nn.Module, data: SiteData) -> torch.Tensor:
    """The model's loss on all rows of ``data``."""
    score = model(data.x)
    if data.labels is not None:
        return bce(score, data.labels)
    assert data.sets is not None
    return cox_nll(score, data.sets)


def _batch_loss(model: nn.Module, data: SiteData, rows: torch.Tensor) -> torch.Tensor:
    """Loss on a mini-batch: Cox risk sets within the batch (rows of this site only)."""
    idx = rows.numpy()
    if data.labels is not None:
        keep = np.isin(data.labels.rows, idx)
        sub = LandmarkLabels(np.arange(int(keep.sum())), data.labels.label[keep])
        return bce(model(data.x[torch.as_tensor(data.labels.rows[keep])]), sub)
    return cox_nll(model(data.x[rows]), risk_sets(data.time[idx], data.event[idx]))


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms on one thread, restored afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def _optimizer(name: str, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be one of {set(OPTIMIZERS)}; got {name!r}")


def train_local(
    model: nn.Module,
    data: SiteData,
    epochs: int,
    lr: float,
    seed: int,
    *,
    optimizer: str = "sgd",
    batch_size: int = 0,
    proximal_mu: float = 0.0,
    l2: float = 0.0,
) -> float:
    """Train ``model`` in place on ``data``; return the mean training loss of the last epoch.

    Parameters
    ----------
    epochs : int
        Passes over the rows; a full-batch epoch is one optimiser step.
    lr : float
    seed : int
        Seeds the mini-batch order (unused with full batches).
    optimizer : {"sgd", "adam"}
        A fresh optimiser each call (its state does not outlive a federated round).
    batch_size : int
        0 for full batches.
    proximal_mu : float
        FedProx: adds ``mu / 2 * ||w - w_start||^2``, ``w_start`` the weights on entry.
    l2 : float
        Adds ``l2 / 2 * ||w||^2``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    with deterministic():
        opt = _optimizer(optimizer, params, lr)
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        n = int(data.x.shape[0])
        last = float("nan")
        model.train()
        for _ in range(epochs):
            if batch_size and batch_size < n:
                perm = torch.randperm(n, generator=generator)
                batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
            else:
                batches = [torch.arange(n)]
            total = 0.0
            for rows in batches:
                opt.zero_grad()
                loss = (
                    data_loss(model, data) if len(batches) == 1 else _batch_loss(model, data, rows)
                )
                penalty = _penalty(params, start, proximal_mu, l2)
                (loss + penalty).backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            last = total / max(n, 1)
        model.eval()
    return last


def _penalty(
    params: Sequence[torch.Tensor], start: Sequence[torch.Tensor], mu: float, l2: float
) -> torch.Tensor:
    penalty = torch.zeros((), dtype=DTYPE)
    if mu > 0:
        penalty = penalty + mu / 2 * sum(
            ((p - s) ** 2).sum() for p, s in zip(params, start, strict=True)
        )
    if l2 > 0:
        penalty = penalty + l2 / 2 * sum((p**2).sum() for p in params)
    return penalty


def predict(model: nn.Module, x: ArrayLike) -> NDArray[np.float64]:
    """Risk scores (higher = earlier event) of encoded rows ``x``."""
    with torch.no_grad(), deterministic():
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)
        return model(xt).numpy().astype(np.float64)


def evaluate_local(model: nn.Module, data: SiteData) -> tuple[float, NDArray[np.float64]]:
    """Loss of ``model`` on ``data`` and its risk scores for every row."""
    with torch.no_grad(), deterministic():
        score = model(data.x)
        loss = data_loss(model, data)
    return float(loss), score.numpy().astype(np.float64)


def get_parameters(model: nn.Module) -> list[NDArray[np.float64]]:
    """The model's weights as numpy arrays, in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_parameters(model: nn.Module, arrays: Sequence[ArrayLike]) -> None:
    """Load weights from numpy arrays in ``state_dict`` order (shapes must match)."""
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} arrays for this model; got {len(arrays)}")
    state = {
        k: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE)
        for k, a in zip(keys, arrays, strict=True)
    }
    model.load_state_dict(state, strict=True)
