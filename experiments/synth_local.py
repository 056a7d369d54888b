"""Synthetic bundles as Japanese and Korean hospitals export them: legacy encodings, local terms.

:func:`experiments.synth.write_trial` uses these to write a site's CSV or XPT text in Shift_JIS,
CP932, EUC-JP, CP949, EUC-KR or Latin-1 (declared in its ``site.toml``), and to write SEX and
RACE in the site's language (``男``/``女``, ``남``/``여``, ``アジア人``, ``아시아인``) with the
``terminology.toml`` that maps them back to the CDISC levels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import UserError
from sites.encoding import DEFAULT_ENCODING, ENCODINGS, canonical_encoding

LOCAL_TERMS: dict[str, dict[str, dict[str, str]]] = {
    "JP": {"SEX": {"M": "男", "F": "女"}, "RACE": {"ASIAN": "アジア人"}},
    "KR": {"SEX": {"M": "남", "F": "여"}, "RACE": {"ASIAN": "아시아인"}},
}
"""Country -> variable -> study level -> how the site writes it."""
LANGUAGE_COUNTRY = {
    "shift_jis": "JP",
    "cp932": "JP",
    "euc_jp": "JP",
    "cp949": "KR",
    "euc_kr": "KR",
}
"""A plain ``--encoding`` applies to the sites of the country whose language it writes."""
ALL_SITES = "*"
XPT_TEXT_BYTES = 200
"""XPT version 5 character values hold at most this many bytes."""
_OBS_HEADER = b"HEADER RECORD*******OBS     HEADER RECORD!!!!!!!"
_NAMESTR_HEADER = b"HEADER RECORD*******NAMESTR HEADER RECORD!!!!!!!"
_NAMESTR_BYTES = 140


def parse_encodings(values: Iterable[str]) -> dict[str, str]:
    """``--encoding`` arguments (``cp932``, ``KR=cp949``, ``JP01=euc_jp``) as key -> encoding.

    A key is a site id or country code; a plain Japanese or Korean encoding applies to the
    sites of that country (:data:`LANGUAGE_COUNTRY`), any other to every site (``"*"``).
    """
    out: dict[str, str] = {}
    for value in values:
        key, _, name = value.rpartition("=")
        encoding = canonical_encoding(name)
        if encoding is None:
            allowed = ", ".join(repr(e) for e in ENCODINGS)
            raise UserError(f"--encoding must be [SITE=]one of {{{allowed}}}; got {value!r}")
        out[key or LANGUAGE_COUNTRY.get(encoding, ALL_SITES)] = encoding
    return out


def site_encoding(encodings: Mapping[str, str], site_id: str, country: str) -> str:
    """The encoding a site's files are written in: by site id, else country, else ``"*"``."""
    for key in (site_id, country, ALL_SITES):
        if key in encodings:
            return encodings[key]
    return DEFAULT_ENCODING


def localise(frame: pd.DataFrame, country: str) -> pd.DataFrame:
    """``frame`` with SEX and RACE written as a site of ``country`` writes them."""
    terms = LOCAL_TERMS.get(country, {})
    changes = {v: frame[v].map(lambda x, t=t: t.get(x, x)) for v, t in terms.items() if v in frame}
    return frame.assign(**changes)


def terminology_toml(country: str) -> str | None:
    """The ``terminology.toml`` mapping a site's local terms back to the study's levels."""
    terms = LOCAL_TERMS.get(country)
    if not terms:
        return None
    lines = ["# Local values of this site -> the study's levels (written by `trialfed synth`)."]
    for variable, table in terms.items():
        lines.append(f"\n[{variable}]")
        lines += [
            f"{json.dumps(local, ensure_ascii=False)} = {json.dumps(level)}"
            for level, local in table.items()
        ]
    return "\n".join(lines) + "\n"


def write_csv(frame: pd.DataFrame, path: Path, encoding: str, site: str) -> None:
    """A CSV file in ``encoding``; UserError when a value cannot be written in it."""
    try:
        text = frame.to_csv(index=False)
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError as exc:
        raise UserError(_unencodable(site, encoding, exc)) from None


def write_xpt(frame: pd.DataFrame, path: Path, encoding: str, site: str, **options: Any) -> None:
    """An XPT v5 file whose character values are bytes in ``encoding``.

    pyreadstat writes text as UTF-8, so the file is written with ASCII stand-ins of the same
    byte length, and the stand-ins are then overwritten in place with the encoded values (the
    observations are fixed-width records; each variable's offset is in its NAMESTR record).
    """
    import pyreadstat

    text = [c for c in frame.columns if frame[c].dtype == object]
    encoded = {c: _encoded(frame[c], encoding, site, c) for c in text}
    stand_in = frame.assign(**{c: ["x" * len(v) for v in encoded[c]] for c in text})
    pyreadstat.write_xport(stand_in, path, file_format_version=5, **options)
    data = bytearray(path.read_bytes())
    offsets = _namestr(bytes(data))
    start = data.index(_OBS_HEADER) + 80
    record = sum(length for _, length in offsets.values())
    fields = {c: offsets[c] for c in text}
    layout = np.dtype(
        {
            "names": list(fields),
            "formats": [f"S{length}" for _, length in fields.values()],
            "offsets": [position for position, _ in fields.values()],
            "itemsize": record,
        }
    )
    records = np.frombuffer(data, dtype=layout, count=len(frame), offset=start)
    for column, (_, length) in fields.items():
        records[column] = np.array([v.ljust(length, b" ") for v in encoded[column]], f"S{length}")
    path.write_bytes(bytes(data))


def _encoded(values: pd.Series, encoding: str, site: str, column: str) -> list[bytes]:
    out = []
    for value in values:
        try:
            raw = ("" if value is None else str(value)).encode(encoding)
        except UnicodeEncodeError as exc:
            raise UserError(_unencodable(site, encoding, exc)) from None
        if len(raw) > XPT_TEXT_BYTES:
            raise UserError(
                f"site {site}: column {column}: {value!r} takes {len(raw)} bytes in {encoding}; "
                f"XPT v5 text holds at most {XPT_TEXT_BYTES}"
            )
        out.append(raw)
    return out


def _namestr(data: bytes) -> dict[str, tuple[int, int]]:
    """Variable name -> (offset in the record, length in bytes), from the NAMESTR records."""
    header = data.index(_NAMESTR_HEADER)
    count = int(data[header + 54 : header + 58])
    first = header + 80
    out = {}
    for i in range(count):
        entry = data[first + i * _NAMESTR_BYTES : first + (i + 1) * _NAMESTR_BYTES]
        length = int.from_bytes(entry[4:6], "big")
        name = entry[8:16].decode("ascii").strip()
        position = int.from_bytes(entry[84:88], "big")
        out[name] = (position, length)
    return out


def _unencodable(site: str, encoding: str, exc: UnicodeEncodeError) -> str:
    return (
        f"site {site}: {exc.object[exc.start : exc.end]!r} cannot be written in {encoding}; "
        "choose an encoding of the site's language (--encoding JP=cp932, KR=cp949)"
    )
