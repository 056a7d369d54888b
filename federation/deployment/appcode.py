"""The site-side code of trialfed: staging it as a Flower app, and comparing an app bundle to it.

A run's app bundle (FAB) is built by whoever submits the run. A site never runs the bundle's
code (:mod:`federation.deployment.site_runner` answers with its installed trialfed), and it
refuses a bundle whose site-side code differs from its own unless the site approved that bundle
by hash (``[policy] approved_apps`` in ``site.toml``). This module computes both sides.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from analysis.errors import UserError

APP_PACKAGES = ("analysis", "sites", "federation", "models")  # what a site runs; never experiments
APP_FILES = ("pyproject.toml", "README.md", "LICENSE")
CODE_SUFFIX = ".py"


def source_root() -> Path:
    """The folder that holds the installed ``analysis``, ``sites``, ``federation`` packages."""
    return Path(__file__).resolve().parents[2]


def app_dir(stage: Path) -> Path:
    """Stage the Flower app (this installation's packages and pyproject.toml) in ``stage``.

    ``flwr run`` packs a folder into a FAB; packing the source tree itself walks ``.venv`` and
    everything else in it (16 s on the reference machine) and would ship stray files, so only the
    Python packages and ``pyproject.toml`` (which has ``[tool.flwr.app]``) are copied.
    """
    root = source_root()
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise UserError(
            f"{root}: no pyproject.toml with [tool.flwr.app]; deployment runs need trialfed "
            "installed from its source tree (pip install -e .)"
        )
    app = stage / "app"
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    for name in APP_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, app / name)
    for package in APP_PACKAGES:
        for path in (root / package).rglob("*"):
            if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts:
                target = app / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return app


def _is_code(parts: tuple[str, ...]) -> bool:
    return (
        len(parts) > 1
        and parts[0] in APP_PACKAGES
        and parts[-1].endswith(CODE_SUFFIX)
        and "__pycache__" not in parts
    )


@lru_cache(maxsize=1)
def installed_digests() -> dict[str, str]:
    """``{"federation/client_app.py": sha256, ...}`` of the installed site-side code."""
    root = source_root()
    found: dict[str, str] = {}
    for package in APP_PACKAGES:
        for path in (root / package).rglob(f"*{CODE_SUFFIX}"):
            rel = path.relative_to(root)
            if _is_code(rel.parts):
                found[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def bundle_digests(content: bytes) -> dict[str, str]:
    """The same digests for the site-side code inside an app bundle (a zip archive)."""
    found: dict[str, str] = {}
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for info in archive.infolist():
            parts = PurePosixPath(info.filename).parts
            if not info.is_dir() and _is_code(parts):
                found["/".join(parts)] = hashlib.sha256(archive.read(info)).hexdigest()
    return found


@dataclass(frozen=True)
class CodeDifference:
    """How an app bundle's site-side code differs from the installed code."""

    changed: list[str]
    added: list[str]
    removed: list[str]

    @property
    def same(self) -> bool:
        return not (self.changed or self.added or self.removed)

    def describe(self, limit: int = 4) -> str:
        """``"changed: a.py, b.py; added: c.py"`` with at most ``limit`` names per group."""
        groups = []
        for label, names in (
            ("changed", self.changed),
            ("added", self.added),
            ("missing", self.removed),
        ):
            if names:
                more = f" and {len(names) - limit} more" if len(names) > limit else ""
                groups.append(f"{label}: {', '.join(names[:limit])}{more}")
        return "; ".join(groups)


def compare(bundle: dict[str, str], installed: dict[str, str]) -> CodeDifference:
    """The files of ``bundle`` that differ from, are not in, or are missing from ``installed``."""
    return CodeDifference(
        changed=sorted(p for p in bundle.keys() & installed.keys() if bundle[p] != installed[p]),
        added=sorted(bundle.keys() - installed.keys()),
        removed=sorted(installed.keys() - bundle.keys()),
    )
