"""Shared pieces of the training tests: synthetic bundles that allow training, plans, runs."""

from __future__ import annotations

from pathlib import Path

from experiments.synth import generate_trial, write_trial
from federation.local_grid import LocalGrid
from federation.training import run_training
from federation.training_client import training_client_app
from federation.training_outcome import TrainingOutcome

POLICY = '[policy]\nmin_cell_count = 0\nallowed_analyses = ["km", "cox", "train"]\n'


def write_bundles(out: Path, subjects: int = 600, sites: int = 3, seed: int = 7) -> list[Path]:
    """``trialfed synth --design drug`` bundles (CSV) whose policy allows ``train``."""
    write_trial(generate_trial("drug", subjects, sites, seed), out, "csv")
    folders = sorted(p for p in (out / "sites").iterdir() if p.is_dir())
    for folder in folders:
        set_policy(folder, POLICY)
    return folders


def set_policy(folder: Path, policy: str) -> None:
    """Replace the ``[policy]`` table of a bundle's site.toml."""
    toml = (folder / "site.toml").read_text(encoding="utf-8")
    (folder / "site.toml").write_text(toml.split("[policy]")[0] + policy, encoding="utf-8")


def train_plan(**keys: object) -> str:
    """A plan with one train analysis named ``risk``; ``keys`` override the defaults."""
    table: dict[str, object] = {
        "name": "risk",
        "kind": "train",
        "param": "OS",
        "model": "cox-linear",
        "features": ["AGE", "SEX", "TRT01P"],
        "strategy": "fedavg",
        "rounds": 5,
        "lr": 0.5,
        "seed": 0,
        "test_fraction": 0.25,
    }
    table.update(keys)
    lines = ['[study]\nid = "TEST"\n\n[[analysis]]']
    for key, value in table.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def run_local(bundles: list[Path], plan: str) -> tuple[TrainingOutcome, LocalGrid]:
    """Run the plan's ``risk`` analysis over an in-process Flower Grid."""
    grid = LocalGrid(training_client_app(), [{"bundle": str(b)} for b in bundles])
    return run_training(grid, plan, "risk", timeout=60), grid


ROSSI_FEATURES = ["AGE", "TRT01P", "PRIO", "RACE", "WEXP", "MAR", "PARO"]


def write_rossi_sites(out: Path, sites: int = 3, seed: int = 0) -> list[Path]:
    """lifelines' Rossi recidivism data (432 rows), split at random into ``sites`` bundles.

    TRT01P is the financial-aid arm; the endpoint ``ARREST`` is weeks to re-arrest.
    """
    import numpy as np
    from lifelines.datasets import load_rossi

    df = load_rossi()
    site_of = np.random.default_rng(seed).integers(0, sites, len(df))
    folders = []
    for k in range(sites):
        rows = df[site_of == k].reset_index(drop=True)
        ids = [f"ROSSI-{k}-{i:03d}" for i in range(len(rows))]
        folder = out / f"S{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        adsl = {
            "STUDYID": "ROSSI",
            "USUBJID": ids,
            "SITEID": f"S{k + 1}",
            "TRT01P": np.where(rows.fin == 1, "Aid", "None"),
            "AGE": rows.age,
            "SEX": "M",
            "PRIO": rows.prio,
            "RACE": rows.race,
            "WEXP": rows.wexp,
            "MAR": rows.mar,
            "PARO": rows.paro,
        }
        adtte = {
            "USUBJID": ids,
            "PARAMCD": "ARREST",
            "PARAM": "Time to re-arrest (weeks)",
            "AVAL": rows.week,
            "CNSR": 1 - rows.arrest,
        }
        import pandas as pd

        pd.DataFrame(adsl).to_csv(folder / "adsl.csv", index=False)
        pd.DataFrame(adtte).to_csv(folder / "adtte.csv", index=False)
        (folder / "site.toml").write_text(
            f'[site]\nid = "S{k + 1}"\nname = "Rossi part {k + 1}"\ncountry = "US"\n\n' + POLICY,
            encoding="utf-8",
        )
        folders.append(folder)
    return folders
