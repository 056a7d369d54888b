"""Imports point down only, and no module imports itself back through others.

The layers, lowest first: ``analysis`` (with ``models`` beside it) <- ``sites`` <- ``federation``
<- ``experiments``. A module may import its own layer and the layers below; ``models`` may import
``analysis`` only, and ``analysis`` never ``models``. The import graph is read from the source
(every import statement, including those under ``TYPE_CHECKING`` and inside functions), each
imported name resolved to the longest module prefix that exists (``from federation import
workers`` is an edge to ``federation.workers``; ``from analysis.plan import Plan`` one to
``analysis.plan``). The same rule as ``../shared/tools/layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER = ("analysis", "sites", "federation", "experiments")
"""Layers, lowest first."""
PACKAGES = (*ORDER, "models")


def _module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _imported_names(module: str, path: Path) -> set[str]:
    """Dotted names ``path`` imports (relative imports made absolute)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.update(".".join(filter(None, (base, alias.name))) for alias in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> dotted names it imports from the project's packages."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(root, path)
            graph[module] = {
                name for name in _imported_names(module, path) if name.split(".")[0] in PACKAGES
            }
    return graph


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the project."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _layer_violation(module: str, target: str) -> str | None:
    here, there = module.split(".")[0], target.split(".")[0]
    if here in ORDER and there in ORDER and ORDER.index(there) > ORDER.index(here):
        return f"{module} imports {target} (a higher layer)"
    if (here == "models" and there in ORDER[1:]) or (here == "analysis" and there == "models"):
        return f"{module} imports {target} (models/ sits beside analysis/)"
    return None


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle found by a depth-first walk, as ``a -> b -> a``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    found: set[str] = set()

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                found.add(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                walk(target)
        state[module] = 2
        stack.pop()

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return sorted(found)


def violations(root: Path) -> list[str]:
    """Every upward import and every module cycle under ``root``, one line each."""
    graph = import_graph(root)
    modules = set(graph)
    bad: list[str] = []
    resolved: dict[str, set[str]] = {}
    for module, names in sorted(graph.items()):
        resolved[module] = set()
        for name in sorted(names):
            target = _resolve(name, modules) or name
            problem = _layer_violation(module, target)
            if problem:
                bad.append(problem)
            if target in modules and target != module:
                resolved[module].add(target)
    return bad + [f"cycle: {cycle}" for cycle in _cycles(resolved)]


def test_the_repository_imports_point_down_without_cycles() -> None:
    found = violations(REPO)
    assert not found, "layer rule broken:\n" + "\n".join(found)


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()


def test_the_checker_reports_upward_imports_and_cycles(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "analysis/stats.py": "from experiments.report import render\n",
            "analysis/fit.py": "import models.net\n",
            "models/net.py": "from sites import bundle\nimport analysis.stats\n",
            "sites/bundle.py": "from . import check\nimport analysis.stats\n",
            "sites/check.py": "from sites.bundle import load\n",
            "federation/run.py": "from sites.bundle import load\nfrom federation import codec\n",
            "federation/codec.py": "import numpy\n",
            "experiments/report.py": "from federation.run import go\n",
        },
    )
    assert violations(tmp_path) == [
        "analysis.fit imports models.net (models/ sits beside analysis/)",
        "analysis.stats imports experiments.report (a higher layer)",
        "models.net imports sites.bundle (models/ sits beside analysis/)",
        "cycle: analysis.stats -> experiments.report -> federation.run -> sites.bundle"
        " -> analysis.stats",
        "cycle: sites.bundle -> sites.check -> sites.bundle",
    ]


def test_a_tree_that_keeps_the_rule_has_no_violation(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "analysis/stats.py": "import numpy\n",
            "models/net.py": "from analysis.stats import mean\n",
            "sites/bundle.py": "from analysis import stats\nfrom .check import rules\n",
            "sites/check.py": "from . import normalise\n",
            "sites/normalise.py": "import analysis.stats\n",
            "federation/run.py": "from sites.bundle import load\nimport models.net\n",
            "experiments/report.py": "from federation.run import go\nfrom analysis import stats\n",
        },
    )
    assert violations(tmp_path) == []
