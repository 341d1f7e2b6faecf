"""bf16 autocast on the CPU against fp32: epoch time per model, and the evidence sweep.

Speed (the default): for each model and input size, one built run on MNIST-format data (synthetic
28x28 pixels written as IDX files, as scripts/bench.py does) or on the 8x8 digits, training epochs
alternating fp32 / bf16 (``run.amp_dtype``: what ``trainer.amp`` sets) after a warm-up pair, median
seconds per epoch and the ratio; the machine's CPU, cores and the threads used are named.

    python scripts/bench_bf16.py [--models mlp lenet convnet resnet] [--datasets mnist digits]
                                 [--repeats 5] [--samples 10000] [--threads 1] [--out bf16.json]

Evidence (``--sweep DIR``): regbench itself trains every model in fp32 (``trainer.amp=false``) and
bf16 (``trainer.amp=true``) with the same seeds, on scikit-learn's digits and on the same images
upscaled to 28x28 and written as MNIST's four IDX files (``dataset=mnist``: torchvision's reader),
one Hydra sweep per model and dataset under DIR; then ``python -m regbench.report`` with
``--equivalence`` on each (a seed-paired TOST of test accuracy and ECE, bf16 - fp32), its verdicts
tabled with the precisions' means into DIR/evidence.{json,md}. The margins (``MARGINS``) are cited
where defined. bf16 is equivalent to fp32 overall when every model and dataset is: an
intersection-union test (Berger 1982), so each TOST at 5 % (its 90 % interval) needs no adjustment.

    python scripts/bench_bf16.py --sweep /tmp/bf16_sweeps [--seeds 10] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench import (  # scripts/bench.py: IDX files, CPU name
    cpu_model,
    write_idx,
    write_synthetic_mnist,
)

from regbench.cli.compose import compose_settings
from regbench.machine import available_cores, cpu_has_bf16
from regbench.run.engine import Run

MODELS = ("mlp", "lenet", "convnet", "resnet")
DATASETS = ("digits", "mnist")
# Epochs per dataset: digits' default (trainer.epochs, 30); the 28x28 copies cost up to 10x more
# per epoch (ResNet-20), and fp32 reaches its 30-epoch digits accuracy there within 10-15 epochs.
EPOCHS = {"digits": 30, "mnist": 15}
# Equivalence margins, absolute. Accuracy: one binomial standard error of accuracy on the 360-image
# digits test split at the models' ~97 % (sqrt(0.97 * 0.03 / 360) = 0.9 pp): a difference below it
# is below what the test split can tell about one model. ECE: a run's own 95 % bootstrap interval
# of test ECE on that split is 1.4-2.6 pp wide (metrics.json test/ece_ci_*), a standard error of
# 0.4-0.7 pp, so 1 pp is 1.5-2.5 of them. Fixed before the sweep ran.
ACC_MARGIN = 0.01
ECE_MARGIN = 0.01
MARGINS = {"test/acc": ACC_MARGIN, "test/ece": ECE_MARGIN}
PRECISIONS = {"fp32": "trainer.amp=false", "bf16": "trainer.amp=true"}
SPEED_DATA = {"mnist": "28x28 (synthetic MNIST-format)", "digits": "8x8 digits"}


# --- speed ---------------------------------------------------------------------------------------

def epoch_times(model: str, data: list[str], repeats: int, threads: int) -> dict[str, float]:
    # The default batch size (64): bf16's gain on small images depends on it, and it is what the
    # trainer.amp default decides for.
    run = Run.build(compose_settings([
        *data, "dataset.val_size=0", f"model={model}", f"trainer.num_threads={threads}",
        "trainer.progress=false", f"trainer.epochs={2 * repeats + 2}"]))
    precisions = {"fp32": None, "bf16": torch.bfloat16}
    times: dict[str, list[float]] = {name: [] for name in precisions}
    for index in range(repeats + 1):  # the first pair warms up
        for name, dtype in precisions.items():
            run.amp_dtype = dtype
            started = time.perf_counter()
            run.train_epoch(index)
            if index:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def machine_facts(threads: int) -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": available_cores(), "threads": threads,
            "native_bf16": cpu_has_bf16(), "load_average": os.getloadavg()[0],
            "torch": torch.__version__, "python": sys.version.split()[0]}


def speed(args: argparse.Namespace) -> None:
    """Both input sizes: the speed-up of bf16 depends on the images' size as well as the model."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_mnist(Path(folder), args.samples, num_test=100)
        inputs = {"mnist": ["dataset=mnist", f"dataset.root={folder}", "dataset.download=false"],
                  "digits": ["dataset=digits"]}
        for dataset in args.datasets:
            for model in args.models:
                medians = epoch_times(model, inputs[dataset], args.repeats, args.threads)
                rows.append({"dataset": dataset, "model": model, "seconds_per_epoch": medians,
                             "speedup_bf16": medians["fp32"] / medians["bf16"]})
                print(f"{dataset:<8}{model:<10}{medians['fp32']:>9.3f} s fp32{medians['bf16']:>9.3f} "
                      f"s bf16{rows[-1]['speedup_bf16']:>7.2f}x", flush=True)
    machine = machine_facts(args.threads)
    print(speed_table(rows, machine))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "samples": args.samples,
                                        "repeats": args.repeats, "rows": rows}, indent=2) + "\n")


def speed_table(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = ["| data | model | fp32 s/epoch | bf16 s/epoch | fp32 / bf16 |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        times = row["seconds_per_epoch"]
        lines.append(f"| {SPEED_DATA[row['dataset']]} | {row['model']} | {times['fp32']:.3f} | {times['bf16']:.3f} | "
                     f"{row['speedup_bf16']:.2f} |")
    lines.append(f"\n{machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s), "
                 f"native bf16: {machine['native_bf16']}, torch {machine['torch']}, load average "
                 f"{machine['load_average']:.1f} at the end")
    return "\n".join(lines)


# --- evidence sweep ------------------------------------------------------------------------------

def write_digits_as_mnist(root: Path) -> tuple[float, float]:
    """scikit-learn's digits (regbench's own split) upscaled bilinearly to 28x28 and written as
    MNIST's four IDX files under ``root/MNIST/raw``; returns the training pixels' mean and std in
    [0, 1] (the dataset's normalization: MNIST's own statistics do not fit these images)."""
    from regbench.datasets.digits import load_digits

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    splits = load_digits(None)
    for prefix, split in (("train", splits.train), ("t10k", splits.test)):
        upscaled = torch.nn.functional.interpolate(split.images.float(), size=(28, 28), mode="bilinear")
        pixels = upscaled.round().clamp(0, 255).to(torch.uint8)[:, 0]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels.numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", split.labels.numpy())
        if prefix == "train":
            statistics_ = (pixels.float() / 255).mean().item(), (pixels.float() / 255).std().item()
    return statistics_


def dataset_overrides(dataset: str, mnist_root: Path, pixel_stats: tuple[float, float]) -> list[str]:
    if dataset == "digits":
        return ["dataset=digits"]
    mean, std = pixel_stats
    # val_size 180: the same held-out count as digits (mnist's default is a tenth, 143).
    return ["dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false",
            "dataset.val_size=180", f"dataset.mean=[{mean:.4f}]", f"dataset.std=[{std:.4f}]"]


def sweep_command(model: str, dataset: str, sweep_dir: Path, data: list[str], seeds: int,
                  n_jobs: int) -> list[str]:
    amp = ",".join(value.split("=")[1] for value in PRECISIONS.values())
    return [sys.executable, "-m", "regbench", "-m", f"model={model}", *data,
            f"trainer.epochs={EPOCHS[dataset]}", f"trainer.amp={amp}",
            f"seed={','.join(map(str, range(seeds)))}", "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={n_jobs}", "trainer.num_threads=1", "trainer.progress=false",
            "evaluation.figures=false", f"hydra.sweep.dir={sweep_dir}"]


def report_command(sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "regbench.report", str(sweep_dir), "--baseline", PRECISIONS["fp32"],
            "--equivalence", *(f"{metric}={margin}" for metric, margin in MARGINS.items())]


def run_sweeps(args: argparse.Namespace) -> None:
    out: Path = args.sweep
    out.mkdir(parents=True, exist_ok=True)
    pixel_stats = write_digits_as_mnist(out / "mnist_root")
    for dataset in args.datasets:
        data = dataset_overrides(dataset, out / "mnist_root", pixel_stats)
        for model in args.models:
            sweep_dir = out / f"{dataset}_{model}"
            started = time.perf_counter()
            launched = subprocess.run(sweep_command(model, dataset, sweep_dir, data, args.seeds, args.n_jobs))
            print(f"{sweep_dir.name}: exit {launched.returncode}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    summarize(args)


# --- evidence: the report's TOST ----------------------------------------------------------------

def paired_metrics(sweep_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """precision name -> seed -> metrics.json of the completed runs of one sweep (by the precision
    each run recorded, so a run asked for bf16 on a CPU without it counts as fp32)."""
    found: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in PRECISIONS}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("status") == "completed":
            found[metrics["precision"]][metrics["seed"]] = metrics
    return found


def report_verdicts(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The report's TOST of bf16 against fp32 per metric (its comparisons.csv: one comparison per
    metric, so the interval is the 90 % one and Holm changes nothing)."""
    with (sweep_dir / "comparisons.csv").open(newline="") as file:
        rows = {row["metric"]: row for row in csv.DictReader(file) if row["metric"] in MARGINS}
    return {metric: {"mean_difference": float(row["mean_diff"]),
                     "interval_level": float(row["tost_ci_level"]),
                     "interval": [float(row["tost_low"]), float(row["tost_high"])],
                     "p": float(row["tost_p_holm"]), "verdict": row["tost_verdict"]}
            for metric, row in rows.items()}


def evidence_row(sweep_dir: Path) -> dict[str, Any]:
    runs = paired_metrics(sweep_dir)
    seeds = sorted(set(runs["fp32"]) & set(runs["bf16"]))
    row: dict[str, Any] = {"sweep": sweep_dir.name, "pairs": len(seeds)}
    for metric, verdict in report_verdicts(sweep_dir).items():
        values = {name: [runs[name][seed][metric] for seed in seeds] for name in PRECISIONS}
        row[metric] = {"margin": MARGINS[metric], "fp32_sd": statistics.stdev(values["fp32"]),
                       **{f"{name}_mean": statistics.fmean(values[name]) for name in PRECISIONS},
                       **verdict}
    # metrics.json's seconds: the epochs' training time (the sweep's 2 jobs shared the cores).
    row["median_train_seconds"] = {name: statistics.median(runs[name][seed]["seconds"] for seed in seeds)
                                   for name in PRECISIONS}
    return row


def evidence_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | model | pairs | metric | fp32 mean | bf16 mean | bf16 - fp32 | 90 % interval "
             "| margin | TOST p | verdict |", "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: "
             "| ---: | --- |"]
    for row in rows:
        dataset, model = row["sweep"].split("_", 1)
        for metric in MARGINS:
            found = row[metric]
            low, high = found["interval"]
            lines.append(f"| {dataset} | {model} | {row['pairs']} | {metric} | {found['fp32_mean']:.4f} "
                         f"| {found['bf16_mean']:.4f} | {found['mean_difference']:+.4f} "
                         f"| [{low:+.4f}, {high:+.4f}] | ±{found['margin']:.2f} | {found['p']:.3g} "
                         f"| {found['verdict']} |")
    return "\n".join(lines)


def summarize(args: argparse.Namespace) -> None:
    """regbench's report with --equivalence on each sweep (its output in <sweep>/report.log), then
    its verdicts of all sweeps in one table, evidence.{json,md}."""
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            sweep_dir = args.sweep / f"{dataset}_{model}"
            if not sweep_dir.is_dir():
                continue
            report = subprocess.run(report_command(sweep_dir), capture_output=True, text=True)
            (sweep_dir / "report.log").write_text(report.stdout + report.stderr)
            rows.append(evidence_row(sweep_dir))
    table = evidence_table(rows)
    print(table)
    machine = machine_facts(threads=1)
    (args.sweep / "evidence.md").write_text(table + "\n")
    (args.sweep / "evidence.json").write_text(json.dumps(
        {"machine": machine, "epochs": EPOCHS, "rows": rows}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=10_000, help="MNIST-format training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="the speed table's JSON")
    parser.add_argument("--sweep", type=Path, help="run the evidence sweep into this folder")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--summarize-only", action="store_true",
                        help="with --sweep: only the reports and the evidence table of finished sweeps")
    args = parser.parse_args()
    if args.sweep is None:
        speed(args)
    elif args.summarize_only:
        summarize(args)
    else:
        run_sweeps(args)


if __name__ == "__main__":
    main()
