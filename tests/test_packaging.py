"""Every third-party package the code imports is declared in pyproject.toml, where it belongs.

The packages (analysis, sites, federation, experiments, models) may import only
``[project].dependencies`` (and what their extras bring, e.g. ``ray`` through
``flwr[simulation]``, pinned by Flower); tests and benchmarks may also import the ``dev`` extra.
The test oracles (lifelines, statsmodels) are dev-only. Import names are mapped to
distributions through the installed metadata (``mlflow`` is provided by ``mlflow`` and
``mlflow-skinny``: either declared will do).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "sites", "federation", "experiments", "models")
DEV_ONLY = ("lifelines", "statsmodels")
"""Oracles of the tests: never a runtime dependency."""
LOCAL = {*PACKAGES, "tests", "benchmarks"}


def _normalise(name: str) -> str:
    """PEP 503 name: ``tomli_w`` and ``Tomli-W`` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, set[str]]:
    """Distribution name and extras of a requirement string such as ``flwr[simulation]>=1.42``."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    assert found, f"cannot read requirement {text!r}"
    extras = {e.strip() for e in (found.group(2) or "").split(",") if e.strip()}
    return _normalise(found.group(1)), extras


def declared(requirements: Iterable[str]) -> set[str]:
    """Distributions the requirements install by name, with those their extras name."""
    names: set[str] = set()
    for text in requirements:
        name, extras = _requirement(text)
        names.add(name)
        for extra in extras:
            for sub in metadata.requires(name) or []:
                if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", sub):
                    names.add(_requirement(sub)[0])
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` (stdlib and project excluded)."""
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return {top for top in tops if top not in sys.stdlib_module_names and top not in LOCAL}


def undeclared(root: Path, folders: Iterable[str], allowed: set[str]) -> list[str]:
    """``file imports module`` for each import not provided by a distribution in ``allowed``."""
    providers = metadata.packages_distributions()
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for module in sorted(imported_modules(path)):
                dists = {_normalise(d) for d in providers.get(module, [module])}
                if not dists & allowed:
                    found.append(f"{path.relative_to(root)} imports {module} ({sorted(dists)})")
    return found


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"runtime": project["dependencies"], "dev": project["optional-dependencies"]["dev"]}


def test_packages_import_only_runtime_dependencies() -> None:
    found = undeclared(REPO, PACKAGES, declared(_project()["runtime"]))
    assert not found, "declare in [project].dependencies:\n" + "\n".join(found)


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    project = _project()
    allowed = declared(project["runtime"]) | declared(project["dev"])
    found = undeclared(REPO, ("tests", "benchmarks"), allowed)
    assert not found, "declare in [project.optional-dependencies].dev:\n" + "\n".join(found)


def test_the_oracles_are_dev_only() -> None:
    project = _project()
    runtime, dev = declared(project["runtime"]), declared(project["dev"])
    assert not runtime & set(DEV_ONLY) and set(DEV_ONLY) <= dev
    found = [
        f"{path.relative_to(REPO)} imports {module}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for module in imported_modules(path) & set(DEV_ONLY)
    ]
    assert not found


def test_the_checker_reports_an_undeclared_import(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os\nimport numpy as np\nfrom tomli_w import dumps\nfrom . import b\n"
    )
    assert undeclared(tmp_path, ["pkg"], {"numpy"}) == ["pkg/a.py imports tomli_w (['tomli-w'])"]
    assert undeclared(tmp_path, ["pkg"], {"numpy", "tomli-w"}) == []
    assert declared(["flwr[simulation]>=1.42"]) >= {"flwr", "ray"}
    assert declared(["Tomli_W>=1"]) == {"tomli-w"}
