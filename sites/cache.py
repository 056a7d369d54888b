"""An optional on-disk cache of parsed site bundles, keyed by the hash of the files.

In a deployment every message starts a fresh ClientApp process, so the per-process cache of
:mod:`sites.prepared` does not survive between rounds, and a large CSV bundle would be parsed and
validated again for every message. With the environment variable :data:`CACHE_ENV` set, the
normalised, validated tables are kept as Parquet files and read back instead:

- ``TRIALFED_BUNDLE_CACHE=bundle``: in ``<bundle>/.trialfed-cache/``;
- ``TRIALFED_BUNDLE_CACHE=/some/folder``: in ``/some/folder/<site id hash>/``;
- unset or empty: no cache (the default; nothing is written next to the data).

The key is the SHA-256 of ``site.toml``, both tables, ``terminology.toml`` (when present) and the
source of the loading and checking code, so an edited file or a new rule invalidates it. Only a
successful (valid) load is cached; a folder that cannot be written simply means no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import iso3166
from analysis import terminology as study_terminology
from sites import bundle as bundle_module
from sites import check, csv_typed, encoding, normalise, terminology
from sites.bundle import SiteBundle, find_dataset, load_bundle

CACHE_ENV = "TRIALFED_BUNDLE_CACHE"
"""Environment variable that turns the cache on (see the module notes)."""
CACHE_FOLDER = ".trialfed-cache"
"""Name of the cache folder inside a bundle folder."""
CACHE_FORMAT = 3
_CHUNK = 1 << 20


def cache_dir(folder: Path, setting: str | None = None) -> Path | None:
    """Where the cache of bundle ``folder`` lives, or ``None`` when caching is off."""
    value = os.environ.get(CACHE_ENV, "") if setting is None else setting
    if not value:
        return None
    if value == "bundle":
        return folder / CACHE_FOLDER
    digest = hashlib.sha256(str(folder.resolve()).encode("utf-8")).hexdigest()[:16]
    return Path(value) / digest


def bundle_key(folder: Path) -> str:
    """SHA-256 of the bundle's files and of the code that parses and checks them."""
    digest = hashlib.sha256(f"trialfed-bundle-cache {CACHE_FORMAT}\n".encode())
    modules = [bundle_module, check, csv_typed, normalise, encoding, terminology, iso3166]
    code = [Path(m.__file__) for m in (*modules, study_terminology) if m.__file__]
    files = [folder / "site.toml", find_dataset(folder, "adsl"), find_dataset(folder, "adtte")]
    terms = folder / terminology.TERMINOLOGY_FILE
    if terms.is_file():
        files.append(terms)
    for path in code + files:
        digest.update(f"{path.name}\n".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def load_cached(path: str | Path, setting: str | None = None) -> SiteBundle:
    """:func:`sites.bundle.load_bundle`, through the on-disk cache when it is on.

    Parameters
    ----------
    path : str or Path
        The bundle folder.
    setting : str, optional
        Overrides the :data:`CACHE_ENV` environment variable.
    """
    folder = Path(path)
    where = cache_dir(folder, setting) if folder.is_dir() else None
    if where is None:
        return load_bundle(folder)
    try:
        key = bundle_key(folder)
    except Exception:  # missing or ambiguous files: load_bundle names the problem
        return load_bundle(folder)
    hit = _read(where, key, folder)
    if hit is not None:
        return hit
    loaded = load_bundle(folder)
    _write(where, key, loaded)
    return loaded


def _read(where: Path, key: str, folder: Path) -> SiteBundle | None:
    meta_path = where / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        adsl = _read_table(where / f"{key}.adsl.parquet")
        adtte = _read_table(where / f"{key}.adtte.parquet")
    except (OSError, ValueError, pa.ArrowException):
        return None
    return SiteBundle(
        site_id=meta["site_id"],
        name=meta["name"],
        country=meta["country"],
        policy=meta["policy"],
        path=folder,
        adsl=adsl,
        adtte=adtte,
        warnings=list(meta["warnings"]),
        files={k: folder / v for k, v in meta["files"].items()},
        encoding=meta["encoding"],
        terminology=meta["terminology"],
        mapped=meta["mapped"],
    )


def _read_table(path: Path) -> pd.DataFrame:
    """One cached table, converted column by column as Arrow lets go of each (a fresh message
    process reads a million-row bundle: the Arrow and pandas copies must not coexist whole)."""
    table = pq.read_table(path)
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table  # self_destruct: the table must not be used again
    pa.default_memory_pool().release_unused()  # else the allocator keeps the freed blocks
    return frame


def _write(where: Path, key: str, loaded: SiteBundle) -> None:
    meta = {
        "site_id": loaded.site_id,
        "name": loaded.name,
        "country": loaded.country,
        "policy": loaded.policy,
        "warnings": loaded.warnings,
        "files": {k: Path(v).name for k, v in loaded.files.items()},
        "encoding": loaded.encoding,
        "terminology": loaded.terminology,
        "mapped": loaded.mapped,
    }
    try:
        where.mkdir(parents=True, exist_ok=True)
        for old in where.iterdir():  # one entry per bundle: drop stale versions
            if not old.name.startswith(key):
                old.unlink(missing_ok=True)
        for name, frame in (("adsl", loaded.adsl), ("adtte", loaded.adtte)):
            _atomic(where / f"{key}.{name}.parquet", frame.to_parquet)
        _atomic(where / f"{key}.json", lambda p: Path(p).write_text(json.dumps(meta)))
    except (OSError, ValueError, TypeError):
        return  # a read-only folder or an unusual column type: no cache, same answers


def _atomic(target: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
