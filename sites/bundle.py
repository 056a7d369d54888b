"""Load a site bundle (``site.toml`` + ADaM ADSL and ADTTE) into a validated :class:`SiteBundle`.

A bundle folder holds ``site.toml`` and exactly one ``adsl.*`` and one ``adtte.*`` file, each in
SAS transport v5 (``.xpt``), CSV (``.csv``) or Parquet (``.parquet``) format. Loading reads and
normalises the tables the same way for every format, then runs the rules of :mod:`sites.check`;
any problem raises :class:`analysis.errors.UserError` listing all of them, so nothing leaves a
site whose data are wrong.

Normalisation rules: :mod:`sites.normalise`. CSV files are read by :mod:`sites.csv_typed` where
it gives the same table, else as text cells. Text is UTF-8 unless ``site.toml [site] encoding``
declares another, and is decoded strictly (:mod:`sites.encoding`); the optional
``terminology.toml`` then maps local values to the study's levels (:mod:`sites.terminology`).
"""

from __future__ import annotations

import io
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from analysis.data import SurvivalData, read_only
from analysis.errors import UserError
from analysis.terminology import default_study_levels
from sites import check, terminology
from sites.csv_typed import read_csv_typed
from sites.encoding import (
    DEFAULT_ENCODING,
    canonical_encoding,
    decode_csv,
    decode_frame,
    utf8_warning,
)
from sites.normalise import normalise, text, to_numbers
from sites.policy import SitePolicy, parse_policy

FORMATS = {".xpt": "xpt", ".csv": "csv", ".parquet": "parquet"}
"""Supported file suffixes and their format names."""


@dataclass(frozen=True, eq=False)
class SiteBundle:
    """A validated site bundle.

    Attributes
    ----------
    site_id, name, country : str
        From the ``[site]`` table of ``site.toml``; ``country`` is the ISO 3166 alpha-2 code
        (``site.toml`` may give the alpha-3 one: ``JPN`` is reported as ``JP``).
    policy : dict
        The ``[policy]`` table as written, validated by :func:`sites.policy.parse_policy`
        (empty when absent: the defaults apply); :attr:`rules` is the parsed policy.
    path : Path
        The bundle folder.
    adsl, adtte : pandas.DataFrame
        Normalised ADSL (one row per subject) and ADTTE (one row per subject and PARAMCD).
    warnings : list of str
        Problems that do not stop the analysis (small arms, subjects without ADTTE rows, ...).
    files : mapping of str to Path
        The files read, under the keys ``"site"``, ``"adsl"``, ``"adtte"`` and, when the bundle
        has one, ``"terminology"``.
    encoding : str
        The text encoding the tables were read in (``site.toml [site] encoding``, else UTF-8).
    terminology : dict
        The site's ``terminology.toml``: variable -> local value -> study level.
    mapped : dict
        Variable -> local value -> rows that the terminology mapped (ADSL and ADTTE together).
    """

    site_id: str
    name: str
    country: str
    policy: dict[str, Any]
    path: Path
    adsl: pd.DataFrame
    adtte: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    files: Mapping[str, Path] = field(default_factory=dict)
    encoding: str = DEFAULT_ENCODING
    terminology: dict[str, dict[str, str]] = field(default_factory=dict)
    mapped: dict[str, dict[str, int]] = field(default_factory=dict)

    @cached_property
    def rules(self) -> SitePolicy:
        """The parsed ``[policy]`` (defaults filled in)."""
        return parse_policy(self.policy)[0]

    def params(self) -> list[str]:
        """The ADTTE parameter codes (PARAMCD), sorted."""
        return list(self._params)

    @cached_property
    def _params(self) -> tuple[str, ...]:
        # every request asks for them; a set over a million cells takes ~50 ms
        return tuple(sorted(set(self.adtte["PARAMCD"])))

    def subjects(self) -> dict[str, NDArray[Any]]:
        """Every ADSL column (one entry per subject) plus ``SITE`` and ``COUNTRY``."""
        return self._covariates(None, len(self.adsl))

    def survival_data(self, paramcd: str) -> SurvivalData:
        """ADTTE rows of ``paramcd`` joined to ADSL by USUBJID.

        Parameters
        ----------
        paramcd : str
            Parameter code, one of :meth:`params`.

        Returns
        -------
        SurvivalData
            ``time = AVAL``, ``event = (CNSR == 0)``, covariates = every ADSL column (numeric
            as float64, other as str) plus ``SITE`` (site id) and ``COUNTRY`` (site country).
        """
        selected = self.adtte["PARAMCD"].to_numpy() == paramcd
        if not selected.any():
            available = ", ".join(repr(p) for p in self.params())
            raise UserError(
                f"parameter must be one of {{{available}}} at site {self.site_id}; got {paramcd!r}"
            )
        every = bool(selected.all())  # then the columns are used as they are, not copied

        def endpoint(name: str) -> NDArray[Any]:
            column = self.adtte[name].to_numpy()
            return column if every else column[selected]

        subjects = self.adsl["USUBJID"].to_numpy()
        ids = endpoint("USUBJID")
        positions: NDArray[np.intp] | None = None
        if ids.shape != subjects.shape or not bool((ids == subjects).all()):
            positions = pd.Index(subjects).get_indexer(ids)  # otherwise ADSL order: no join
        return SurvivalData(
            time=endpoint("AVAL").astype(np.float64, copy=False),
            event=endpoint("CNSR").astype(np.float64, copy=False) == 0.0,
            covariates=self._covariates(positions, ids.shape[0]),
        )

    def _covariates(self, positions: NDArray[np.intp] | None, n: int) -> dict[str, NDArray[Any]]:
        covariates: dict[str, NDArray[Any]] = {}
        for name in self.adsl.columns:
            column = self.adsl[name].to_numpy()
            # without positions: the table's own column, seen read-only
            covariates[str(name)] = read_only(column) if positions is None else column[positions]
        covariates["SITE"] = _repeated(self.site_id, n)
        covariates["COUNTRY"] = _repeated(self.country, n)
        return covariates


def _repeated(value: str, n: int) -> NDArray[np.object_]:
    """``n`` references to one ``str`` (``np.full`` would make ``n`` copies of it)."""
    out = np.empty(n, dtype=object)
    out.fill(value)
    return out


def load_bundle(
    path: str | Path, study_levels: Mapping[str, Sequence[str]] | None = None
) -> SiteBundle:
    """Read, normalise and validate the site bundle in folder ``path``.

    Parameters
    ----------
    path : str or Path
        The bundle folder.
    study_levels : mapping, optional
        The study's levels (:func:`analysis.terminology.parse_study_levels`) that values are
        checked against for the warnings; default the CDISC controlled terminology.

    Raises
    ------
    UserError
        When the folder, ``site.toml``, ``terminology.toml`` or either table is missing,
        unreadable, not in the declared encoding or breaks a rule of :mod:`sites.check`; the
        message lists every problem found (file, column, rows, value).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"site bundle folder not found: {folder}")
    problems: list[str] = []
    site, toml_problems = read_site_toml(folder / "site.toml")
    problems += toml_problems
    country = site.get("country") if not toml_problems else None
    encoding = site.get("encoding", DEFAULT_ENCODING)
    terms_file = folder / terminology.TERMINOLOGY_FILE
    terms, term_problems = terminology.read_terminology(terms_file)
    problems += term_problems

    read_warnings: list[str] = []
    tables: dict[str, tuple[Path, pd.DataFrame]] = {}
    mapped: dict[str, dict[str, int]] = {}
    for dataset in ("adsl", "adtte"):
        try:
            file = find_dataset(folder, dataset)
            frame = read_table(file, encoding, country, read_warnings)
        except UserError as exc:
            problems.append(str(exc))
            continue
        frame, counts = terminology.apply_terminology(frame, terms)
        for variable, hits in counts.items():
            into = mapped.setdefault(variable, {})
            for value, rows in hits.items():
                into[value] = into.get(value, 0) + rows
        tables[dataset] = (file, frame)
    if "adsl" in tables:
        file, frame = tables["adsl"]
        problems += check.check_adsl(frame, file.name, country=country)
    if "adtte" in tables:
        file, frame = tables["adtte"]
        problems += check.check_adtte(frame, file.name)
    if not problems:
        (adsl_file, adsl), (adtte_file, adtte) = tables["adsl"], tables["adtte"]
        problems += check.check_subjects(adsl, adtte, adsl_file.name, adtte_file.name)
    if problems:
        check.raise_problems(folder, problems)

    (adsl_file, adsl), (adtte_file, adtte) = tables["adsl"], tables["adtte"]
    for frame, columns in ((adsl, ["AGE"]), (adtte, ["AVAL", "CNSR"])):
        for column in columns:
            frame[column] = to_numbers(frame[column])[0]
    levels = default_study_levels() if study_levels is None else study_levels
    warnings = check.site_warnings(adsl, adtte, adsl_file.name, adtte_file.name)
    warnings += read_warnings
    for file, frame in ((adsl_file, adsl), (adtte_file, adtte)):
        warnings += terminology.width_warnings(frame, file.name)
    warnings += terminology.level_warnings(adsl, adsl_file.name, levels, bool(terms))
    files = {"site": folder / "site.toml", "adsl": adsl_file, "adtte": adtte_file}
    if terms_file.is_file():
        files["terminology"] = terms_file
    return SiteBundle(
        site_id=site["id"],
        name=site["name"],
        country=check.site_country(site["country"]),
        policy=site["policy"],
        path=folder,
        adsl=adsl,
        adtte=adtte,
        warnings=warnings,
        files=files,
        encoding=encoding,
        terminology=terms,
        mapped=mapped,
    )


def read_site_toml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse ``site.toml``; return ``{"id", "name", "country", "encoding", "policy"}`` and its
    problems (``encoding`` is the canonical codec name, UTF-8 when none is declared)."""
    if not path.is_file():
        return {}, [f"{path.name}: file not found in {path.parent}"]
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, [f"{path.name}: TOML syntax error: {exc}"]
    problems = check.check_site_table(document, path.name)
    problems += parse_policy(document.get("policy"), path.name)[1]
    if problems:
        return {}, problems
    site = document["site"]
    policy = dict(document.get("policy", {}))
    return {
        "id": site["id"],
        "name": site["name"],
        "country": site["country"],
        "encoding": canonical_encoding(site.get("encoding", DEFAULT_ENCODING)),
        "policy": policy,
    }, []


def find_dataset(folder: Path, dataset: str) -> Path:
    """The one ``<dataset>.*`` file in ``folder``; UserError naming the files otherwise."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.stem.lower() == dataset)
    supported = ", ".join(FORMATS)
    if not found:
        raise UserError(
            f"{dataset}: no {dataset} file in {folder} (expected {dataset}.xpt, "
            f"{dataset}.csv or {dataset}.parquet)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"{dataset}: exactly one {dataset} file allowed; found {names}")
    if found[0].suffix.lower() not in FORMATS:
        raise UserError(f"{found[0].name}: unsupported file format (supported: {supported})")
    return found[0]


def read_table(
    path: Path,
    encoding: str = DEFAULT_ENCODING,
    country: str | None = None,
    warnings: list[str] | None = None,
) -> pd.DataFrame:
    """Read one ADaM table (.xpt, .csv, .parquet) and normalise it (see the module notes).

    Parameters
    ----------
    path : Path
        The file.
    encoding : str
        The encoding of its text (one of :data:`sites.encoding.ENCODINGS`); bytes that do not
        decode raise UserError naming row, column and bytes, with a hint.
    country : str, optional
        The site's country: which encodings the hint tries first.
    warnings : list of str, optional
        Receives a warning when a file declared in a legacy encoding is also valid UTF-8.
    """
    fmt = FORMATS[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise UserError(f"{path.name}: file is empty (0 bytes)")
    if fmt == "csv":
        return _read_csv_table(path, encoding, country, warnings)
    try:
        if fmt == "xpt":
            frame = _read_xpt(path)
            binary = None  # every character column
        else:
            frame = pd.read_parquet(path)
            binary = _binary_columns(path)
    except Exception as exc:  # every reader has its own errors; all mean "unreadable"
        raise _unreadable(path, fmt, exc) from None
    frame = decode_frame(frame, encoding, path.name, country, binary)
    return normalise(frame)


def _unreadable(path: Path, fmt: str, exc: Exception) -> UserError:
    kind = {"xpt": "SAS transport (XPT) file", "csv": "CSV file", "parquet": "Parquet file"}
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path.name}: cannot be read as a {kind[fmt]}: {detail}")


def _read_csv_table(
    path: Path, encoding: str, country: str | None, warnings: list[str] | None
) -> pd.DataFrame:
    """A CSV table: UTF-8 straight to the typed reader; other encodings decoded first."""
    if encoding == DEFAULT_ENCODING:
        typed = read_csv_typed(path)  # refuses bytes that are not UTF-8: the text path names them
        if typed is not None:
            return typed
        return normalise(_read_csv(path, encoding, country), infer_numbers=True)
    data = path.read_bytes()
    content = decode_csv(data, encoding, path.name, country)
    if warnings is not None and (warning := utf8_warning(data, encoding, path.name)):
        warnings.append(warning)
    del data  # the file is held as text and as UTF-8 bytes from here: not three times
    typed = read_csv_typed(content.encode("utf-8"))
    if typed is not None:
        return typed
    return normalise(_csv_cells(content, path), infer_numbers=True)


def _read_csv(
    path: Path, encoding: str = DEFAULT_ENCODING, country: str | None = None
) -> pd.DataFrame:
    """A CSV file as text cells (the text path, before normalisation), decoded strictly."""
    content = decode_csv(path.read_bytes(), encoding, path.name, country)
    return _csv_cells(content, path)


def _csv_cells(content: str, path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas' parser errors: the file is not a table
        raise _unreadable(path, "csv", exc) from None


def _read_xpt(path: Path) -> pd.DataFrame:
    """An XPT table with its character values as ``bytes`` (decoded by the caller, strictly)."""
    with pd.read_sas(path, format="xport", encoding=None, iterator=True) as reader:
        xport: Any = reader  # XportReader: nobs and columns are not in pandas-stubs
        xport.nobs = xpt_records(path, xport.record_start, xport.record_length)
        if xport.nobs == 0:  # pandas raises StopIteration on a header-only file
            return pd.DataFrame(columns=[text(c) for c in xport.columns])
        return reader.read()


def xpt_records(path: Path, start: int, length: int) -> int:
    """Observations in an XPT file whose records (``length`` bytes each) begin at ``start``.

    The file is padded with blanks to a multiple of 80 bytes, so records that lie within the
    last 80 bytes and are all blanks are padding. (pandas counts every 8 aligned blanks in the
    last 80 bytes as padding, and so drops the last subject when the last record holds them,
    e.g. a short value in a wide text column.)
    """
    total = path.stat().st_size - start
    count = total // length if length else 0
    with path.open("rb") as handle:
        while count > 0 and (count - 1) * length > total - 80:
            handle.seek(start + (count - 1) * length)
            if handle.read(length).strip(b" "):
                break
            count -= 1
    return count


def _binary_columns(path: Path) -> list[str]:
    """Names of a Parquet file's binary columns (its string columns are UTF-8 by the format)."""
    schema = pq.read_schema(path)
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    return [f.name for f in schema if any(kind(f.type) for kind in binary)]
