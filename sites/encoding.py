"""Text encodings of site files: strict decoding, precise errors, and a hint that names the fix.

CSV and XPT text is read as UTF-8 unless ``site.toml [site] encoding`` names another of
:data:`ENCODINGS`. Bytes that do not decode under that encoding are an error naming the file, the
row, the column and the bytes; when another common encoding (:data:`HINT_ORDER`) decodes the file
cleanly the message says which, and shows the offending value as that encoding reads it. Nothing
falls back to Latin-1 (which decodes any bytes at all, so it would hide every mistake).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from analysis.errors import UserError

DEFAULT_ENCODING = "utf-8"
"""What a bundle's text is read as when ``site.toml`` declares no encoding."""
ENCODINGS = ("utf-8", "shift_jis", "cp932", "euc_jp", "cp949", "euc_kr", "latin-1", "cp1252")
"""Encodings a site may declare (Python codec names; their usual aliases are accepted too)."""
_ALIASES = {"iso8859-1": "latin-1", "windows-31j": "cp932", "windows-949": "cp949"}
HINT_ORDER: dict[str | None, tuple[str, ...]] = {
    "JP": ("cp932", "euc_jp", "utf-8", "cp949", "cp1252"),
    "KR": ("cp949", "utf-8", "cp932", "euc_jp", "cp1252"),
    None: ("utf-8", "cp932", "euc_jp", "cp949", "cp1252"),
}
"""Encodings tried for a hint, by site country: the supersets that Windows tools write first
(CP932 for Shift_JIS, CP949 for EUC-KR); never Latin-1, which decodes any bytes at all."""
_LANGUAGE = {"cp932": "ja", "shift_jis": "ja", "euc_jp": "ja", "cp949": "ko", "euc_kr": "ko"}
SHOWN_CHARS = 40
"""Longest value quoted in a message."""


def canonical_encoding(name: str) -> str | None:
    """The :data:`ENCODINGS` entry that ``name`` (any alias: ``Shift_JIS``, ``EUC-KR``) means."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        codec = codecs.lookup(key).name
    except LookupError:
        return None
    codec = _ALIASES.get(codec, codec)
    return codec if codec in ENCODINGS else None


def decode_csv(data: bytes, encoding: str, file: str, country: str | None = None) -> str:
    """The text of a CSV file's bytes; UserError naming row, column and bytes where they fail.

    A UTF-8 byte order mark is dropped.
    """
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.end]
        where, column = csv_position(data[: exc.start].decode(codec))
        offending = _csv_value(data, exc.start, column)
        raise UserError(
            f"{file}: {where}: bytes {_hex(bad)} are not valid {encoding} "
            f"({_declared(encoding)}). {hint([data], encoding, file, offending, country)}"
        ) from None


def csv_position(prefix: str) -> tuple[str, int]:
    """Where the text after ``prefix`` starts: ``"row 3, column RACE (line 4)"`` and the column's
    0-based index (-1 in the header)."""
    marker = "\ue000"  # a private-use character: it marks the failing cell in the parsed rows
    try:
        records = list(csv.reader(io.StringIO(prefix + marker)))
    except csv.Error:
        records = []
    line = prefix.count("\n") + 1
    if not records:
        return f"line {line}", -1
    header, current = records[0], records[-1]
    if len(records) == 1:
        return f"header (line {line}), column {len(current)}", -1
    index = len(current) - 1
    name = header[index] if index < len(header) else f"{index + 1} (past the header)"
    return f"row {len(records) - 1}, column {name} (line {line})", index


def _csv_value(data: bytes, start: int, column: int) -> bytes:
    """The bytes of the line holding byte ``start`` (the whole line: columns may hold commas in
    other encodings' bytes, so the field is cut only once a candidate decoded it)."""
    begin = data.rfind(b"\n", 0, start) + 1
    end = data.find(b"\n", start)
    line = data[begin : end if end >= 0 else len(data)].rstrip(b"\r")
    return line if column < 0 else b"\x00%d\x00" % column + line


def decode_frame(
    frame: pd.DataFrame,
    encoding: str,
    file: str,
    country: str | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """``frame`` with the ``bytes`` cells of ``columns`` (default: every object column) decoded.

    XPT character values and Parquet binary columns arrive as ``bytes``; each is decoded as
    ``encoding``, strictly. The first cell that fails raises UserError naming its row, column and
    bytes, with a :func:`hint` drawn from up to 200 of the file's non-ASCII values.
    """
    if columns is None:
        names = [c for c in frame.columns if frame[c].dtype == object]
    else:
        names = list(columns)
    decoded = {}
    for name in names:
        cells = frame[name].to_numpy()
        try:
            decoded[name] = _decoded(cells, encoding)
        except UnicodeDecodeError:
            row, cell, bad = _first_failure(cells, encoding)
            samples = [cell, *_non_ascii(frame[c].to_numpy() for c in names)]
            raise UserError(
                f"{file}: row {row + 1}, column {name}: bytes {_hex(bad)} are not valid "
                f"{encoding} ({_declared(encoding)}). "
                f"{hint(samples, encoding, file, cell, country)}"
            ) from None
    return frame.assign(**decoded) if decoded else frame


def _decoded(cells: NDArray[Any], encoding: str) -> NDArray[np.object_]:
    out = np.empty(len(cells), dtype=object)
    out[:] = [c.decode(encoding) if isinstance(c, bytes) else c for c in cells]
    return out


def _first_failure(cells: NDArray[Any], encoding: str) -> tuple[int, bytes, bytes]:
    """Row, cell and offending bytes of the first cell of ``cells`` that does not decode."""
    for row, cell in enumerate(cells):
        if isinstance(cell, bytes):
            try:
                cell.decode(encoding)
            except UnicodeDecodeError as exc:
                return row, cell, cell[exc.start : exc.end]
    raise ValueError("every cell decodes")


def _non_ascii(columns: Iterable[NDArray[Any]], limit: int = 200) -> list[bytes]:
    """Up to ``limit`` distinct non-ASCII ``bytes`` cells of ``columns`` (for :func:`hint`)."""
    found: dict[bytes, None] = {}
    for cells in columns:
        for cell in cells:
            if isinstance(cell, bytes) and not cell.isascii():
                found[cell] = None
                if len(found) >= limit:
                    return list(found)
    return list(found)


def hint(
    data: Sequence[bytes], declared: str, file: str, offending: bytes, country: str | None
) -> str:
    """Which common encoding decodes all of ``data`` cleanly, and what to do about it.

    Candidates (:data:`HINT_ORDER`) that decode every sample are ranked by how much of their
    non-ASCII text falls in the scripts their language writes (kana and kanji for Japanese
    encodings, Hangul for Korean ones), then by the site country's order: Korean bytes can read
    as plausible kanji in EUC-JP, so the country decides between equally plausible readings,
    and the message shows the others.
    """
    order = HINT_ORDER.get(country, HINT_ORDER[None])
    clean = []
    for rank, candidate in enumerate(c for c in order if c != declared):
        try:
            texts = [sample.decode(candidate) for sample in data]
        except UnicodeDecodeError:
            continue
        clean.append((-_plausible(texts, candidate), rank, candidate))
    if not clean:
        tried = ", ".join(c for c in order if c != declared)
        return (
            f"It is not valid {tried} either: re-encode {file} as UTF-8 (or export it again "
            "as UTF-8)."
        )
    clean.sort()
    best = clean[0][2]
    also = ", ".join(f"{c} ({_shown(offending, c)})" for score, _, c in clean[1:] if score <= -0.5)
    fix = (
        f"remove encoding from site.toml [site] (UTF-8 is the default) or re-encode {file}"
        if best == "utf-8"
        else f'declare encoding = "{best}" in site.toml [site], or re-encode {file} as UTF-8'
    )
    more = f" (it also decodes as {also}: check which reading is right)" if also else ""
    return f"It decodes cleanly as {best}, which reads {_shown(offending, best)}{more}: {fix}."


def utf8_warning(data: bytes, encoding: str, file: str) -> str | None:
    """A warning when a file declared in a legacy encoding is valid UTF-8 with non-ASCII text.

    Real Shift_JIS, EUC or CP949 text is almost never valid UTF-8, so the declaration is likely
    wrong; both readings of the first non-ASCII line are shown.
    """
    if encoding == "utf-8" or data.isascii():
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = next(i for i, b in enumerate(data) if b > 0x7F)
    line = _csv_value(data, start, -1)
    return (
        f"{file} is declared {encoding} in site.toml but is also valid UTF-8: a line reads "
        f"{_shown(line, encoding)} as {encoding} and {_shown(line, 'utf-8')} as UTF-8; if the "
        "second is right, remove encoding from site.toml [site]"
    )


def _plausible(texts: Sequence[str], encoding: str) -> float:
    """Share of the non-ASCII characters in the scripts ``encoding``'s language writes."""
    language = _LANGUAGE.get(encoding)
    total = good = 0
    for text in texts:
        for char in text:
            code = ord(char)
            if code < 0x80:
                continue
            total += 1
            good += _in_script(code, language)
    return good / total if total else 1.0


def _in_script(code: int, language: str | None) -> bool:
    """True for characters everyday text in ``language`` is written in."""
    common = 0x3000 <= code <= 0x303F or 0xFF01 <= code <= 0xFF5E  # CJK punctuation, full-width
    if language == "ja":
        return common or 0x3040 <= code <= 0x30FF or 0x4E00 <= code <= 0x9FFF
    if language == "ko":
        return common or 0xAC00 <= code <= 0xD7A3
    # UTF-8 and others: any letter of those scripts, or Latin-1 letters
    return (
        common
        or 0x3040 <= code <= 0x30FF
        or 0x4E00 <= code <= 0x9FFF
        or 0xAC00 <= code <= 0xD7A3
        or (0xC0 <= code <= 0x24F and code not in (0xD7, 0xF7))
    )


def _shown(value: bytes, encoding: str) -> str:
    """``value`` as ``encoding`` reads it, quoted (the CSV field when it is marked)."""
    column = -1
    if value.startswith(b"\x00"):
        mark, _, line = value[1:].partition(b"\x00")
        column, value = int(mark), line
    text = value.decode(encoding, errors="replace")
    if column >= 0:
        try:
            fields = next(csv.reader(io.StringIO(text)))
            text = fields[column] if column < len(fields) else text
        except (csv.Error, StopIteration):
            pass
    text = text.strip()
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def _declared(encoding: str) -> str:
    if encoding == DEFAULT_ENCODING:
        return "the encoding read when site.toml [site] declares none"
    return "the encoding declared in site.toml [site]"
