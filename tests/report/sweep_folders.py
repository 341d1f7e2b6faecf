"""Hand-built sweep folders for the report's tests: each job folder written by the run's own writer
(``RunFolder.claim`` writes spec.json, ``save_hydra_configs`` the .hydra/ files), with the
metrics.json a test chooses, and a test_calibration.json where it asks for one."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import OmegaConf

from regbench.evaluation.calibration_errors import calibration_summary
from regbench.files import atomic_write_json
from regbench.run.folder import RunFolder
from regbench.run.spec import CALIBRATION_FILE, METRICS_FILE, RunSpec

REGULARIZER_PARAMETERS = {"none": {}, "dropout": {"p": 0.5}, "label_smoothing": {"epsilon": 0.1},
                          "confidence_penalty": {"beta": 1.0}}


def config(seed: int = 0, lr: float = 0.1, regularizer: dict | None = None, **trainer) -> dict:
    return {
        "seed": seed,
        "dataset": {"name": "digits", "root": "data", "download": True, "num_workers": 2},
        "optimizer": {"name": "sgd", "lr": lr, "betas": [0.9, 0.999]},
        "trainer": {"epochs": 3, "num_threads": 0, "device": "auto", "progress": None, **trainer},
        "regularizer": {"none": {}} if regularizer is None else regularizer,
    }


def job_config(regularizer: str, seed: int, **settings) -> dict:
    """``settings``: e.g. dataset="mnist", lr=0.1, trainer={"amp": True}."""
    cfg = config(seed=seed, lr=settings.get("lr", 0.1),
                 regularizer={regularizer: REGULARIZER_PARAMETERS[regularizer]},
                 **settings.get("trainer", {}))
    cfg["dataset"]["name"] = settings.get("dataset", "digits")
    return cfg


def write_job(folder: Path, regularizer: str, seed: int, metrics: dict | None,
              status: str = "completed", **settings) -> None:
    """A job folder as a sweep leaves it: spec.json and .hydra/ (config, overrides) as the run
    writes them once it holds the folder, and metrics.json (None: unfinished, no metrics.json)."""
    cfg = job_config(regularizer, seed, **settings)
    hydra = OmegaConf.create({"overrides": {"task": [f"seed={seed}", f"regularizer={regularizer}"]}})
    with RunFolder(folder).claim(RunSpec(cfg)) as run_folder:
        run_folder.save_hydra_configs(OmegaConf.create(cfg), hydra)
        if metrics is not None:
            atomic_write_json(run_folder.file(METRICS_FILE),
                              {"status": status, "seed": seed, "regularizer": [regularizer], **metrics})


def fake_sweep(folder: Path, runs: list[tuple]) -> Path:
    """runs: (regularizer, seed, metrics or None, status="completed", settings={})."""
    for number, run in enumerate(runs):
        regularizer, seed, metrics, *rest = run
        status = rest[0] if rest else "completed"
        settings = rest[1] if len(rest) > 1 else {}
        write_job(folder / str(number), regularizer, seed, metrics, status, **settings)
    return folder


def write_calibration(folder: Path, seed: int) -> Path:
    """A test_calibration.json as a run writes it (the recorder's calibration_summary), of 200
    random predictions over 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(200, 10, generator=generator)
    labels = torch.randint(0, 10, (200,), generator=generator)
    path = folder / CALIBRATION_FILE
    atomic_write_json(path, calibration_summary(logits, labels))
    return path


def read_comparisons(folder: Path) -> list[dict[str, str]]:
    with (folder / "comparisons.csv").open() as file:
        return list(csv.DictReader(file))


def row_for(rows: list[dict[str, str]], group: str, metric: str) -> dict[str, str]:
    return next(row for row in rows if row["group"] == group and row["metric"] == metric)


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The rows of the group table (the first table; the calibration tables follow it)."""
    rows = {}
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| settings"))
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows
