"""Privacy accounting for training with Gaussian noise on the sites' clipped updates.

The mechanism (Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping``): each round, every
site's model update is clipped to L2 norm ``clip``, the updates are averaged with equal weights
over the ``m`` sites, and Gaussian noise of standard deviation ``noise_multiplier * clip / m`` is
added to the mean. One round is then a Gaussian mechanism of noise multiplier
``noise_multiplier`` with respect to adding or removing one site's whole data (site-level DP),
every site takes part in every round (no sampling amplification), and ``rounds`` rounds compose.

Accounting uses Renyi DP (Mironov 2017): the Gaussian mechanism has RDP ``alpha / (2 sigma^2)``
at order ``alpha``, RDP adds up over rounds, and the conversion to (epsilon, delta)-DP is the one
of Canonne, Kamath and Steinke (2020, Prop. 12 of arXiv:2004.00010 v4), minimised over the
orders below. These are the formulas and orders of Google's ``dp-accounting`` package (the backend
of Flower's ``RdpAccountant``), which the tests use as the oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)
"""RDP orders searched (``dp_accounting.rdp.DEFAULT_RDP_ORDERS``)."""


@dataclass(frozen=True)
class PrivacySpent:
    """What ``rounds`` releases of the Gaussian mechanism cost.

    Attributes
    ----------
    epsilon, delta : float
    order : float
        The RDP order at which the bound is attained.
    rounds : int
    noise_multiplier : float
    """

    epsilon: float
    delta: float
    order: float
    rounds: int
    noise_multiplier: float

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain values for results.json (``accountant`` names the method)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rdp_order": self.order,
            "rounds": self.rounds,
            "noise_multiplier": self.noise_multiplier,
            "accountant": "rdp (Gaussian, no sampling amplification, site-level)",
        }


def gaussian_rdp(noise_multiplier: float, rounds: int, orders: NDArray[np.float64]) -> NDArray:
    """RDP of ``rounds`` compositions of the Gaussian mechanism at each order."""
    return rounds * orders / (2.0 * noise_multiplier**2)


def rdp_to_epsilon(
    orders: NDArray[np.float64], rdp: NDArray[np.float64], delta: float
) -> tuple[float, float]:
    """Smallest epsilon over the orders at ``delta``, and the order attaining it."""
    best, best_order = math.inf, float(orders[0])
    for a, r in zip(orders.tolist(), rdp.tolist(), strict=True):
        if delta**2 + math.expm1(-r) > 0:
            eps = 0.0  # the KL bound alone gives delta here
        elif a > 1.01:  # the bound is unstable as alpha -> 1
            eps = r + math.log1p(-1.0 / a) - math.log(delta * a) / (a - 1.0)
        else:
            eps = math.inf
        if eps < best:
            best, best_order = eps, float(a)
    return max(0.0, best), best_order


def gaussian_epsilon(
    noise_multiplier: float, rounds: int, delta: float, orders: tuple[float, ...] = ORDERS
) -> PrivacySpent:
    """Epsilon at ``delta`` after ``rounds`` rounds of noise multiplier ``noise_multiplier``.

    Raises
    ------
    ValueError
        For a noise multiplier <= 0, rounds < 1 or delta outside (0, 1).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be > 0; got {noise_multiplier!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
    grid = np.asarray(orders, dtype=np.float64)
    eps, order = rdp_to_epsilon(grid, gaussian_rdp(noise_multiplier, rounds, grid), delta)
    return PrivacySpent(eps, float(delta), order, int(rounds), float(noise_multiplier))
