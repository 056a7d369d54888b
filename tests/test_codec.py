"""The message codec: every payload comes back bit for bit; arrays travel packed in one Flower
array (one object instead of two per array); a malformed reference from the other side is
refused before any byte is read."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from federation.codec import decode, encode

ARRAYS = {
    "f64": np.array([0.1, -0.0, np.nan, np.inf, -np.inf, 5e-324]),
    "f32": np.arange(7, dtype=np.float32) / 3,
    "i64": np.array([-(2**63), 2**63 - 1]),
    "i32_2d": np.arange(12, dtype=np.int32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "u8": np.arange(5, dtype=np.uint8),  # 5 bytes: the next array starts after padding
    "bool": np.array([[True, False, True]]),
    "big_endian": np.array([1.5, 2.5], dtype=">f8"),
    "scalar": np.array(3.25),
    "empty": np.zeros((0, 3)),
}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_payloads_come_back_bit_for_bit() -> None:
    payload = {"arrays": ARRAYS, "nest": [1, 2.5, "x", None, True, {"k": ARRAYS["u8"]}],
               "numpy_scalar": np.float64(0.1)}  # fmt: skip
    back = decode(encode(payload))
    for name, array in ARRAYS.items():
        assert _same(array, back["arrays"][name]), name
        assert back["arrays"][name].flags.writeable and back["arrays"][name].flags.owndata
    assert back["nest"][:5] == [1, 2.5, "x", None, True]
    assert _same(ARRAYS["u8"], back["nest"][5]["k"])
    assert back["numpy_scalar"] == 0.1 and isinstance(back["numpy_scalar"], float)


def test_arrays_travel_as_one_packed_array() -> None:
    content = encode({"a": ARRAYS})
    assert list(content.array_records) == ["arrays"]
    assert len(content.array_records["arrays"]) == 1
    assert "arrays" not in encode({"n": 1, "s": "no arrays"}).array_records
    assert decode(encode({"n": 1})) == {"n": 1}


def test_what_cannot_travel_is_refused() -> None:
    with pytest.raises(TypeError, match="numeric"):
        encode({"text": np.array(["a"])})
    with pytest.raises(TypeError, match="set"):
        encode({"bad": {1, 2}})


def _with_reference(reference: Any) -> Any:
    content = encode({"a": np.arange(4.0), "b": np.arange(3)})
    config = content.config_records["config"]
    tree = json.loads(str(config["payload-json"]))
    tree["a"] = {"__array__": reference}
    config["payload-json"] = json.dumps(tree)
    return content


@pytest.mark.parametrize(
    "reference",
    [
        ["<f8", [-1], 0],  # a negative size would read every byte
        ["<f8", [2**40], 0],
        ["<f8", [2**32, 2**32], 0],  # 2**64 elements: wraps to 0 in int64
        ["<f8", [4], 2**20],
        ["<f8", [1], -8],
        ["<f8", [1], True],
        ["|O", [1], 0],
        ["V8", [1], 0],
        ["not a dtype", [1], 0],
        ["<f8", "4", 0],
        ["<f8", [4]],
        "a0",
    ],
)
def test_a_malformed_array_reference_is_refused(reference: Any) -> None:
    with pytest.raises(ValueError, match="array reference"):
        decode(_with_reference(reference))


def test_a_reference_may_read_any_packed_bytes_it_names() -> None:
    """References are offsets into one buffer: a hostile sender gains nothing by pointing one
    at another array's bytes (it only reads what it sent)."""
    back = decode(_with_reference(["<i8", [3], 32]))  # "b" starts after a's 32 bytes
    assert back["a"].tolist() == [0, 1, 2]


def test_packed_arrays_are_read_as_bytes_whatever_their_dtype() -> None:
    """A sender that packs float64 instead of bytes cannot stretch the bounds check."""
    from flwr.app import Array, ArrayRecord

    content = encode({"a": np.arange(4.0)})
    content.array_records["arrays"] = ArrayRecord({"packed": Array(np.arange(4.0))})
    assert decode(content)["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    content.array_records["arrays"] = ArrayRecord({"other": Array(np.arange(4.0))})
    with pytest.raises(ValueError, match="one array 'packed'"):
        decode(content)
