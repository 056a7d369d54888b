"""The exact encodings of secure aggregation (analysis/fixedpoint.py), checked with Python
integers and fractions, and against Flower's own SecAgg+ quantisation arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from analysis import fixedpoint as fp
from federation.flower_internals import dequantize, quantize

RNG = np.random.default_rng(20260101)


def _exact_sum(values: list[np.ndarray], i: int) -> Fraction:
    """What the sites' fixed-point values add up to, by the definition: round(x 2^F) / 2^F."""
    scale = 2**fp.FRACTION_BITS
    return sum((Fraction(round(Fraction(float(v[i])) * scale), scale) for v in values), Fraction(0))


def _limb_sums(values: list[np.ndarray]) -> np.ndarray:
    return np.sum([fp.encode_reals(v) for v in values], axis=0).astype(np.int64)


def test_reals_sum_exactly_over_signs_magnitudes_and_carries() -> None:
    magnitudes = 10.0 ** RNG.integers(-14, 15, 400)
    sites = [RNG.standard_normal(400) * magnitudes for _ in range(9)]
    sites.append(np.array([fp.REAL_BOUND * (1 - 2**-52), -fp.REAL_BOUND * (1 - 2**-52)] * 200))
    limbs = [fp.encode_reals(v) for v in sites]
    assert all(v.min() >= 0 and v.max() < fp.LIMB and np.all(v == np.rint(v)) for v in limbs)
    sums = _limb_sums(sites)
    assert sums.max() >= fp.LIMB  # limb sums carry into the next limb
    decoded = fp.decode_reals(sums, len(sites))
    for i in range(400):
        assert decoded[i] == float(_exact_sum(sites, i))  # the one rounding is the division


def test_each_site_rounds_by_at_most_half_a_unit_in_the_last_fraction_bit() -> None:
    x = RNG.standard_normal(1000) * 10.0 ** RNG.integers(-20, 10, 1000)
    back = fp.decode_reals(fp.encode_reals(x).astype(np.int64), 1)
    assert np.max(np.abs(back - x)) <= 2.0 ** -(fp.FRACTION_BITS + 1)
    integers = RNG.integers(-(2**40), 2**40, 1000).astype(np.float64)
    assert np.array_equal(fp.decode_reals(fp.encode_reals(integers).astype(np.int64), 1), integers)


@pytest.mark.parametrize(
    "bad", [np.inf, -np.inf, np.nan, fp.REAL_BOUND, -fp.REAL_BOUND, 1e300], ids=repr
)
def test_reals_out_of_range_are_an_error_naming_the_value(bad: float) -> None:
    with pytest.raises(fp.RangeError, match=r"cox/gradient: value .* at position 2"):
        fp.encode_reals([0.0, 1.0, bad], "cox/gradient")


def test_counts_and_totals_are_exact_and_checked() -> None:
    counts = RNG.integers(0, fp.LIMB, 500)
    assert np.array_equal(fp.encode_counts(counts), counts)
    totals = RNG.integers(0, fp.TOTAL_BOUND, 500)
    parts = [fp.encode_counts(totals, limbs=2) for _ in range(7)]
    assert max(p.max() for p in parts) < fp.LIMB
    summed = fp.decode_counts(np.sum(parts, axis=0).astype(np.int64), limbs=2)
    assert [int(s) for s in summed] == [7 * int(t) for t in totals]
    for bad in (-1, 0.5, fp.LIMB, np.nan):
        with pytest.raises(fp.RangeError, match="whole numbers 0 <= x < 2\\*\\*21"):
            fp.encode_counts([3, bad], "km/events")
    with pytest.raises(fp.RangeError):
        fp.encode_counts([fp.TOTAL_BOUND], limbs=2)


def test_flowers_quantisation_carries_the_elements_exactly() -> None:
    """The client quantises with Flower's own function; the server's arithmetic of
    SecAggPlusWorkflow's unmask stage (dequantise, offset, divide by the weight total) gives the
    mean, and the mean times the sites is the exact element sum."""
    n = 17
    vectors = [RNG.integers(0, fp.LIMB, 3000).astype(np.float64) for _ in range(n)]
    vectors[0][:3] = [0, fp.LIMB - 1, 1]
    quantised = [
        quantize([v], fp.CLIPPING_RANGE, fp.QUANTIZATION_RANGE)[0].astype(np.int64) for v in vectors
    ]
    total = np.sum(quantised, axis=0) % fp.MODULUS_RANGE
    assert total.max() < fp.MODULUS_RANGE  # n * 2**22 < 2**32: no wrap
    mean = dequantize([total], fp.CLIPPING_RANGE, fp.QUANTIZATION_RANGE)[0]
    mean += -(n - 1) * fp.CLIPPING_RANGE
    mean *= fp.QUANTIZATION_RANGE / (n * fp.QUANTIZATION_RANGE)
    assert np.array_equal(fp.sums_from_mean(mean, n), np.sum(vectors, axis=0).astype(np.int64))
    assert fp.MAX_SITES * fp.QUANTIZATION_RANGE < fp.MODULUS_RANGE
    assert (fp.MAX_SITES + 1) * fp.QUANTIZATION_RANGE >= fp.MODULUS_RANGE


def test_a_mean_that_is_not_an_integer_sum_is_an_error() -> None:
    with pytest.raises(fp.RangeError, match="secure sum"):
        fp.sums_from_mean([1.0, 2.5 / 3], 3)
    with pytest.raises(fp.RangeError):
        fp.sums_from_mean([-1.0], 3)


def test_layout_round_trip_and_digest() -> None:
    layout = fp.Layout()
    layout.add("t/events", "count", 4)
    layout.add("t/n", "total", 2)
    layout.add("cox/gradient", "real", 3)
    layout.add("cox/empty", "real", 0)
    assert layout.width == 4 + 2 * 2 + 3 * fp.LIMBS
    sites: list[dict[str, list[float]]] = [
        {"t/events": [1, 0, 2, 5], "t/n": [3_000_000, 7], "cox/gradient": [-1.5, 0.25, 1e-9]},
        {"t/events": [0, 0, 1, 1], "cox/gradient": [2.0, -0.25, -3e-9]},  # t/n left out: zeros
        {},
    ]
    sums = np.sum([layout.encode(v) for v in sites], axis=0).astype(np.int64)
    totals = layout.decode(sums, len(sites))
    assert totals["t/events"].tolist() == [1, 0, 3, 6]
    assert totals["t/n"].tolist() == [3_000_000, 7]
    given = [np.asarray(v["cox/gradient"]) for v in sites if "cox/gradient" in v]
    assert totals["cox/gradient"].tolist() == [float(_exact_sum(given, i)) for i in range(3)]
    other = fp.Layout()
    other.add("t/events", "count", 5)
    assert other.digest() != layout.digest()
    with pytest.raises(ValueError, match="holds 4 values; got 3"):
        layout.encode({"t/events": [1, 2, 3]})
