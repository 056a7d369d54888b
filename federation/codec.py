"""Encode query and reply payloads as Flower RecordDicts.

A payload is any nest of dicts, lists, str, int, float, bool, None and numeric numpy arrays.
The arrays travel packed, byte for byte, in ONE array of an ``ArrayRecord`` (binary, exact);
the rest travels as JSON text in a ``ConfigRecord``, with each array replaced by a reference
(dtype, shape and offset in the packed bytes). Floats keep every bit: JSON carries them as
repr, and NaN/inf are allowed on this internal channel.

Why one packed array: in deployment Flower sends every array of a message as separate objects
(the array and its chunks), one HTTPS request each, two at a time; a Cox or Kaplan-Meier reply
of a dozen arrays took ~28 requests and 1.2-1.5 s to push. Packed, a message is six objects.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

MESSAGE_TYPE = "query.analysis"  # the ClientApp handler is @app.query("analysis")
_ARRAY_TAG = "__array__"
_JSON_KEY = "payload-json"
_PACKED_KEY = "packed"
_ALIGN = 8  # each array starts on an 8-byte boundary of the packed bytes
_NUMERIC = "biuf"  # numpy dtype kinds that travel: bool, signed, unsigned, float


def encode(payload: Any) -> RecordDict:
    """Pack a payload into a RecordDict with record keys ``config`` and (if any) ``arrays``."""
    parts: list[np.ndarray] = []
    size = 0

    def walk(value: Any) -> Any:
        nonlocal size
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _NUMERIC:
                raise TypeError(f"only numeric arrays travel as arrays, got dtype {value.dtype}")
            flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            reference = {_ARRAY_TAG: [value.dtype.str, list(value.shape), size]}
            padding = -flat.size % _ALIGN
            parts.extend([flat, np.zeros(padding, np.uint8)])
            size += flat.size + padding
            return reference
        if isinstance(value, dict):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise TypeError(f"cannot encode value of type {type(value).__name__}")

    text = json.dumps(walk(payload), allow_nan=True)
    records: dict[str, Any] = {"config": ConfigRecord({_JSON_KEY: text})}
    if parts:
        packed = Array(np.concatenate(parts))
        records["arrays"] = ArrayRecord(array_dict={_PACKED_KEY: packed})
    return RecordDict(records)


def decode(content: RecordDict) -> Any:
    """Inverse of :func:`encode`."""
    config = content.config_records["config"]
    array_record = content.array_records.get("arrays")
    packed = _packed_bytes(array_record)

    def unpack(reference: Any) -> np.ndarray:
        # a reference comes from the other side: check it before reading any bytes
        dtype, shape, offset = _checked_reference(reference)
        count = math.prod(shape)  # Python integers: a huge shape cannot wrap around
        if offset + count * dtype.itemsize > packed.size:
            raise ValueError(f"array reference {reference!r} reaches past the packed bytes")
        flat = np.frombuffer(packed, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape).copy()  # writable, owning its memory

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY_TAG}:
                return unpack(value[_ARRAY_TAG])
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(json.loads(str(config[_JSON_KEY])))


def _packed_bytes(record: ArrayRecord | None) -> np.ndarray:
    """The packed bytes of a message (none when it carries no arrays)."""
    if not record:
        return np.zeros(0, np.uint8)
    if list(record) != [_PACKED_KEY]:
        raise ValueError(f"the arrays record must hold one array {_PACKED_KEY!r}: {list(record)}")
    return np.ascontiguousarray(record[_PACKED_KEY].numpy()).reshape(-1).view(np.uint8)


def _checked_reference(reference: Any) -> tuple[np.dtype[Any], list[int], int]:
    """(dtype, shape, offset) of an array reference; ValueError naming it when malformed."""
    malformed = ValueError(f"malformed array reference {reference!r}: want [dtype, shape, offset]")
    if not (isinstance(reference, list) and len(reference) == 3):
        raise malformed
    dtype, shape, offset = reference
    sizes_ok = isinstance(shape, list) and all(map(_is_count, [*shape, offset]))
    if not (isinstance(dtype, str) and sizes_ok):
        raise malformed
    try:
        kind = np.dtype(dtype)
    except TypeError:
        raise malformed from None
    if kind.kind not in _NUMERIC:
        raise malformed
    return kind, shape, offset


def _is_count(value: Any) -> bool:
    """A non-negative int (bool is an int in Python, but not a size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
