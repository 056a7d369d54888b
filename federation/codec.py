"""Encode query and reply payloads as Flower RecordDicts.

A payload is any nest of dicts, lists, str, int, float, bool, None and numeric numpy arrays.
Arrays travel in one ``ArrayRecord`` (binary, exact); the rest travels as JSON text in a
``ConfigRecord``, with each array replaced by a reference to its key. Floats keep every bit:
JSON carries them as repr, and NaN/inf are allowed on this internal channel.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

MESSAGE_TYPE = "query.analysis"  # the ClientApp handler is @app.query("analysis")
_ARRAY_TAG = "__array__"
_JSON_KEY = "payload-json"


def encode(payload: Any) -> RecordDict:
    """Pack a payload into a RecordDict with record keys ``config`` and ``arrays``."""
    arrays: dict[str, Array] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise TypeError(f"only numeric arrays travel as arrays, got dtype {value.dtype}")
            key = f"a{len(arrays)}"
            arrays[key] = Array(np.ascontiguousarray(value))
            return {_ARRAY_TAG: key}
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
    return RecordDict(
        {"config": ConfigRecord({_JSON_KEY: text}), "arrays": ArrayRecord(array_dict=arrays)}
    )


def decode(content: RecordDict) -> Any:
    """Inverse of :func:`encode`."""
    config = content.config_records["config"]
    array_record = content.array_records.get("arrays")
    arrays = {k: v.numpy() for k, v in array_record.items()} if array_record else {}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY_TAG}:
                return arrays[value[_ARRAY_TAG]]
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(json.loads(str(config[_JSON_KEY])))
