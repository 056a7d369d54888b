"""Every output file of a run, in folders: what ``trialfed run`` writes and MLflow logs.

::

    results.json  plan.toml  report.html  report.<lang>.html (other languages)
    figures/<id>.png|svg       KM curves (named by analysis), forest plots
    tables/<table id>.csv      every table, raw values
    diagnostics/<id>.png|svg   Cox convergence by round

The first language renders the console, ``report.html`` and the figure files; each further
language gets its own report with its figures embedded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.plots import write_plots
from experiments.presentation import locale_for, presentations
from experiments.report import json_ready, write_report, write_tables


@dataclass
class Outputs:
    """The files written, by role: ``root`` (results, plan, reports) and, per analysis, its
    tables, figures and diagnostics; ``folders`` maps each file to its artifact folder."""

    root: list[Path] = field(default_factory=list)
    by_analysis: dict[str, list[Path]] = field(default_factory=dict)
    shared: list[Path] = field(default_factory=list)
    folders: dict[Path, str] = field(default_factory=dict)

    def all(self) -> list[Path]:
        """Every file once, root files first."""
        seen = dict.fromkeys([*self.root, *self.shared])
        for paths in self.by_analysis.values():
            seen.update(dict.fromkeys(paths))
        return list(seen)

    def folder(self, path: Path) -> str | None:
        """The artifact folder of ``path`` (None: the run's root)."""
        return self.folders.get(path)


def _figures_by_analysis(
    results: Mapping[str, Any], images: Mapping[str, Sequence[Path]]
) -> tuple[dict[str, list[Path]], list[Path]]:
    """Per analysis the files of the figures it declares; the shared forest files."""
    own: dict[str, list[Path]] = {}
    shared: list[Path] = []
    for name, shown in presentations(results).items():
        for figure in shown.figures:
            paths = list(images.get(figure.id, []))
            if figure.type == "forest":
                shared += [p for p in paths if p not in shared]
            own.setdefault(name, []).extend(paths)
    return own, shared


def write_outputs(
    results: dict[str, Any],
    out: Path,
    *,
    plan_text: str,
    provenance: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]] = (),
    languages: Sequence[str] = (),
) -> Outputs:
    """Write every output of ``results`` into ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    clean = json_ready(results)
    langs = list(dict.fromkeys(languages)) or [locale_for(clean).lang]
    loc = locale_for(clean, langs[0])
    files = Outputs()
    (out / "results.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    (out / "plan.toml").write_text(plan_text)
    files.root += [out / "results.json", out / "plan.toml"]
    for name, paths in write_tables(clean, out, loc).items():
        files.by_analysis.setdefault(name, []).extend(paths)
    images = write_plots(clean, out, loc)
    own, files.shared = _figures_by_analysis(clean, images)
    for name, paths in own.items():
        files.by_analysis.setdefault(name, []).extend(paths)
    report = dict(plan_text=plan_text, provenance=provenance, sites=sites, results=clean)
    files.root.append(write_report(out / "report.html", images=images, lang=langs[0], **report))
    for lang in langs[1:]:
        with tempfile.TemporaryDirectory(prefix="trialfed-figures-") as tmp:
            translated = write_plots(clean, Path(tmp), locale_for(clean, lang))
            path = out / f"report.{lang}.html"
            files.root.append(write_report(path, images=translated, lang=lang, **report))
    for path in files.all():
        if path.parent != out:
            files.folders[path] = path.parent.name
    return files
