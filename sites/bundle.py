"""Load a site bundle (``site.toml`` + ADaM ADSL and ADTTE) into a validated :class:`SiteBundle`.

A bundle folder holds ``site.toml`` and exactly one ``adsl.*`` and one ``adtte.*`` file, each in
SAS transport v5 (``.xpt``), CSV (``.csv``) or Parquet (``.parquet``) format. Loading reads and
normalises the tables the same way for every format, then runs the rules of :mod:`sites.check`;
any problem raises :class:`analysis.errors.UserError` listing all of them, so nothing leaves a
site whose data are wrong.

Normalisation rules: :mod:`sites.normalise`. CSV files are read by :mod:`sites.csv_typed` where
it gives the same table, else as text cells.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from analysis.data import SurvivalData, read_only
from analysis.errors import UserError
from sites import check
from sites.csv_typed import read_csv_typed
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
        From the ``[site]`` table of ``site.toml``; ``country`` is an ISO 3166 alpha-2 code.
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
        The files read, under the keys ``"site"``, ``"adsl"`` and ``"adtte"``.
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


def load_bundle(path: str | Path) -> SiteBundle:
    """Read, normalise and validate the site bundle in folder ``path``.

    Raises
    ------
    UserError
        When the folder, ``site.toml`` or either table is missing, unreadable or breaks a rule
        of :mod:`sites.check`; the message lists every problem found (file, column, rows, value).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"site bundle folder not found: {folder}")
    problems: list[str] = []
    site, toml_problems = read_site_toml(folder / "site.toml")
    problems += toml_problems
    country = site.get("country") if not toml_problems else None

    tables: dict[str, tuple[Path, pd.DataFrame]] = {}
    for dataset in ("adsl", "adtte"):
        try:
            file = find_dataset(folder, dataset)
            tables[dataset] = (file, read_table(file))
        except UserError as exc:
            problems.append(str(exc))
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
    warnings = check.site_warnings(adsl, adtte, adsl_file.name, adtte_file.name)
    return SiteBundle(
        site_id=site["id"],
        name=site["name"],
        country=site["country"],
        policy=site["policy"],
        path=folder,
        adsl=adsl,
        adtte=adtte,
        warnings=warnings,
        files={"site": folder / "site.toml", "adsl": adsl_file, "adtte": adtte_file},
    )


def read_site_toml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse ``site.toml``; return ``{"id", "name", "country", "policy"}`` and its problems."""
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


def read_table(path: Path) -> pd.DataFrame:
    """Read one ADaM table (.xpt, .csv, .parquet) and normalise it (see the module notes)."""
    fmt = FORMATS[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise UserError(f"{path.name}: file is empty (0 bytes)")
    try:
        if fmt == "xpt":
            frame = _read_xpt(path)
        elif fmt == "csv":
            typed = read_csv_typed(path)
            if typed is not None:
                return typed
            frame = _read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # every reader has its own errors; all mean "unreadable"
        kind = {"xpt": "SAS transport (XPT) file", "csv": "CSV file", "parquet": "Parquet file"}
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path.name}: cannot be read as a {kind[fmt]}: {detail}") from None
    return normalise(frame, infer_numbers=fmt == "csv")


def _read_xpt(path: Path) -> pd.DataFrame:
    with pd.read_sas(path, format="xport", encoding="latin-1", iterator=True) as reader:
        xport: Any = reader  # XportReader: nobs and columns are not in pandas-stubs
        if xport.nobs == 0:  # pandas raises StopIteration on a header-only file
            return pd.DataFrame(columns=[text(c) for c in xport.columns])
        return reader.read()


def _read_csv(path: Path) -> pd.DataFrame:
    options: dict[str, Any] = {"dtype": str, "keep_default_na": False}
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **options)
    except UnicodeDecodeError:
        return pd.read_csv(path, encoding="latin-1", **options)
