"""Exact integer encodings for secure aggregation, and the layout of a summed vector.

Flower's SecAgg+ sums bounded integers: each element of a site's vector is quantised into
``[0, 2**22]`` and the masked sum is taken modulo ``2**32``. With a clipping range of
``c = 2**21`` and a quantisation range of ``Q = 2**22`` (one quantisation step per unit) and
weight 1 per site, an integer element ``x`` in ``[0, 2**21)`` travels exactly, and the sum over
``n <= MAX_SITES`` sites never wraps (``n * 2**22 < 2**32``). This module turns what a site sums
into such elements and the summed elements back into exact totals:

- **counts** (event and censoring counts, group sizes) are one element each, ``0 <= x < 2**21``;
  **totals** (sizes that may exceed that) are two elements of 21 bits;
- **reals** (Cox scores, information, risk-set moments, age sums) are fixed point: ``x`` becomes
  the integer ``v = round(x * 2**FRACTION_BITS)``, offset by ``2**(WIDTH - 1)`` so that it is
  non-negative, and split into ``LIMBS`` limbs of ``LIMB_BITS`` bits. The coordinator adds the
  limb sums with carries in Python integers, subtracts ``n`` offsets and divides by
  ``2**FRACTION_BITS`` once: the sum of the sites' rounded values is exact, and each site's
  rounding error is at most ``2**-(FRACTION_BITS + 1)`` (about 1.1e-16) in absolute value.
  Range: ``|x| < 2**(WIDTH - 1 - FRACTION_BITS) = 2**52`` (about 4.5e15).

A value that is not finite or falls outside its range raises :class:`RangeError` at the site,
naming the value: nothing is ever clipped or wrapped. :class:`Layout` names the segments of a
vector so that a site and the coordinator, deriving it from the same plan and round state, agree
on every element's meaning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

LIMB_BITS = 21
LIMB = 1 << LIMB_BITS
LIMBS = 5
WIDTH = LIMBS * LIMB_BITS
FRACTION_BITS = 52
REAL_BOUND = 2.0 ** (WIDTH - 1 - FRACTION_BITS)
TOTAL_LIMBS = 2
TOTAL_BOUND = 1 << (TOTAL_LIMBS * LIMB_BITS)
CLIPPING_RANGE = float(LIMB)
QUANTIZATION_RANGE = 2 * LIMB
MODULUS_RANGE = 1 << 32
MAX_SITES = MODULUS_RANGE // QUANTIZATION_RANGE - 1
"""1023: with more sites the quantised sum (and SecAgg+'s weight total) would wrap."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
KINDS = {"count": 1, "total": TOTAL_LIMBS, "real": LIMBS}
"""Elements per value of each segment kind."""


class RangeError(ValueError):
    """A value that secure aggregation cannot carry exactly (not finite, or out of range)."""


def _first_bad(values: NDArray[Any], bad: NDArray[np.bool_], what: str, allowed: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        value = float(values.ravel()[i])
        raise RangeError(
            f"{what}: value {value!r} at position {i} is outside the range secure aggregation "
            f"carries exactly ({allowed}); nothing was sent"
        )


def encode_reals(values: ArrayLike, what: str = "value") -> FloatArray:
    """Fixed-point limbs of ``values`` (``LIMBS`` elements per value, each in [0, 2**21)).

    Raises
    ------
    RangeError
        When a value is not finite or ``|x| >= 2**52``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    _first_bad(x, ~np.isfinite(x) | (np.abs(x) >= REAL_BOUND), what, "|x| < 2**52, finite")
    # x * 2**52 is exact (a power of two); rint gives an integer-valued double, and each limb is
    # its exact floor remainder: fmod of integers is exact, as is removing the low bits.
    v = np.rint(x * 2.0**FRACTION_BITS)
    limbs = np.empty((x.size, LIMBS))
    for j in range(LIMBS):
        low = np.mod(v, LIMB)
        limbs[:, j] = low
        v = (v - low) / LIMB
    # v is now 0 (x >= 0) or -1: the limbs hold v mod 2**WIDTH; adding 2**(WIDTH - 1) to the top
    # limb (mod 2**LIMB_BITS) makes them the limbs of the non-negative v + 2**(WIDTH - 1)
    limbs[:, -1] = np.mod(limbs[:, -1] + LIMB // 2, LIMB)
    return limbs.ravel()


def decode_reals(sums: ArrayLike, sites: int) -> FloatArray:
    """Totals of ``sites`` sites' reals from their limb sums (exact integer arithmetic, then one
    correctly rounded division)."""
    limbs = np.asarray(sums, dtype=np.int64).reshape(-1, LIMBS).astype(object)
    total = limbs[:, 0]
    for j in range(1, LIMBS):
        total = total + (limbs[:, j] << (j * LIMB_BITS))
    total = total - (sites << (WIDTH - 1))
    scale = 1 << FRACTION_BITS
    return np.array([int(t) / scale for t in total], dtype=np.float64)


def encode_counts(values: ArrayLike, what: str = "count", limbs: int = 1) -> FloatArray:
    """Non-negative integers as ``limbs`` elements of 21 bits each (1: below 2**21)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    bound = float(1 << (limbs * LIMB_BITS))
    bad = ~np.isfinite(x) | (x < 0) | (x >= bound) | (x != np.rint(x))
    _first_bad(x, bad, what, f"whole numbers 0 <= x < 2**{limbs * LIMB_BITS}")
    if limbs == 1:
        return x
    out = np.empty((x.size, limbs))
    for j in range(limbs):
        out[:, j] = np.mod(x, LIMB)
        x = (x - out[:, j]) / LIMB
    return out.ravel()


def decode_counts(sums: ArrayLike, limbs: int = 1) -> IntArray:
    """Exact totals of counts from their element sums."""
    s = np.asarray(sums, dtype=np.int64).reshape(-1, limbs)
    total = np.zeros(s.shape[0], dtype=np.int64)
    for j in range(limbs):
        total += s[:, j] << (j * LIMB_BITS)
    return total


def sums_from_mean(mean: ArrayLike, sites: int) -> IntArray:
    """The integer element sums from SecAgg+'s mean over ``sites`` sites (``mean * sites``).

    Raises
    ------
    RangeError
        When a result is not (within 1/4) an integer in ``[0, sites * 2**21)``: the vector was
        not encoded as this module does, or the quantisation lost it.
    """
    scaled = np.asarray(mean, dtype=np.float64).ravel() * sites
    rounded = np.rint(scaled)
    bad = ~np.isfinite(scaled) | (np.abs(scaled - rounded) > 0.25)
    bad |= (rounded < 0) | (rounded >= sites * LIMB)
    _first_bad(scaled, bad, "secure sum", f"integers 0 <= x < {sites} * 2**21")
    return rounded.astype(np.int64)


@dataclass(frozen=True)
class Segment:
    """Part of a vector: ``size`` values of one kind (``count``, ``total`` or ``real``)."""

    name: str
    kind: str
    size: int

    @property
    def width(self) -> int:
        """Elements the segment takes in the vector."""
        return self.size * KINDS[self.kind]


class Layout:
    """The named segments of a summed vector, in order."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self._offsets: dict[str, tuple[int, Segment]] = {}
        self.width = 0

    def add(self, name: str, kind: str, size: int) -> None:
        """Append a segment (names are unique)."""
        if kind not in KINDS or name in self._offsets or size < 0:
            raise ValueError(f"bad segment {name!r} of kind {kind!r} and size {size}")
        segment = Segment(name, kind, int(size))
        self._offsets[name] = (self.width, segment)
        self.segments.append(segment)
        self.width += segment.width

    def __contains__(self, name: str) -> bool:
        return name in self._offsets

    def digest(self) -> str:
        """SHA-256 of the segment list: two ends with one digest agree on every element."""
        text = json.dumps([[s.name, s.kind, s.size] for s in self.segments])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def encode(self, values: Mapping[str, ArrayLike]) -> FloatArray:
        """The vector: each named segment's values encoded (segments not given are zeros)."""
        unknown = set(values) - set(self._offsets)
        if unknown:
            raise KeyError(f"no segment(s) {sorted(unknown)} in this layout")
        out = np.zeros(self.width)
        zeros: dict[str, FloatArray] = {
            "count": np.zeros(1),
            "total": np.zeros(1),
            "real": encode_reals([0.0]),
        }
        for start, segment in self._offsets.values():
            part = out[start : start + segment.width]
            if segment.name not in values:
                part[:] = np.resize(zeros[segment.kind], segment.width)
                continue
            given = np.asarray(values[segment.name], dtype=np.float64).ravel()
            if given.size != segment.size:
                raise ValueError(
                    f"segment {segment.name!r} holds {segment.size} values; got {given.size}"
                )
            if segment.kind == "real":
                part[:] = encode_reals(given, segment.name)
            else:
                part[:] = encode_counts(given, segment.name, KINDS[segment.kind])
        return out

    def decode(self, sums: ArrayLike, sites: int) -> dict[str, NDArray[Any]]:
        """Each segment's totals over ``sites`` sites from the element sums."""
        s = np.asarray(sums, dtype=np.int64).ravel()
        if s.size != self.width:
            raise ValueError(f"the layout has {self.width} elements; the sum has {s.size}")
        out: dict[str, NDArray[Any]] = {}
        for start, segment in self._offsets.values():
            part = s[start : start + segment.width]
            if segment.kind == "real":
                out[segment.name] = decode_reals(part, sites)
            else:
                out[segment.name] = decode_counts(part, KINDS[segment.kind])
        return out
