"""The RDP accountant of analysis.privacy against Google's dp-accounting (through Flower's own
RdpAccountant) and against the value measured with Flower's DP wrapper."""

from __future__ import annotations

import pytest

from analysis.privacy import gaussian_epsilon


def test_flower_field_notes_value() -> None:
    # /work/shared/notes/flower-1.42.md: Flower's server-side fixed-clipping wrapper with noise
    # 1.0 and 10 clients reached epsilon = 12.3 at delta = 1e-5 after 5 rounds (RdpAccountant)
    spent = gaussian_epsilon(1.0, 5, 1e-5)
    assert spent.epsilon == pytest.approx(12.3, abs=0.005)
    assert spent.order == 3.0


@pytest.mark.parametrize(
    ("sigma", "rounds", "delta"),
    [(1.0, 5, 1e-5), (4.0, 50, 1e-5), (11.0, 50, 1e-6), (0.7, 1, 1e-3)],
)
def test_matches_the_dp_accounting_rdp_accountant(sigma: float, rounds: int, delta: float) -> None:
    # Google's dp-accounting (the dev extra; Flower's own RdpAccountant wraps it) is the oracle
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    ref_epsilon, ref_order = accountant.get_epsilon_and_optimal_order(delta)
    ours = gaussian_epsilon(sigma, rounds, delta)
    assert ours.epsilon == pytest.approx(ref_epsilon, rel=1e-12)
    assert ours.order == ref_order


def test_more_noise_or_fewer_rounds_cost_less() -> None:
    assert gaussian_epsilon(2.0, 50, 1e-5).epsilon < gaussian_epsilon(1.0, 50, 1e-5).epsilon
    assert gaussian_epsilon(1.0, 10, 1e-5).epsilon < gaussian_epsilon(1.0, 50, 1e-5).epsilon
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        gaussian_epsilon(0.0, 5, 1e-5)
