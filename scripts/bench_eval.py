"""How much of an epoch the evaluation costs, on the default job (or any overrides).

Interleaves, over several repetitions of the same built run:
  A  a training epoch (what the CLI runs, including the epoch-level train/ metrics),
  B  the per-epoch validation: forward pass, every metric of metrics.py, five histograms to TensorBoard,
  C  only the train/ metrics computation of A (classification_metrics on the epoch's logits),
and reports medians and the ratios B/A and C/A.

    python scripts/bench_eval.py [--repeats 15] [--out bench_eval.json] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from regbench.cli.compose import compose_settings
from regbench.evaluation.metrics import classification_metrics
from regbench.run.engine import Run
from regbench.run.recorder import RunRecorder


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    run = Run.build(compose_settings(["trainer.progress=false", *args.overrides]))
    device = run.device
    with tempfile.TemporaryDirectory() as folder:
        recorder = RunRecorder(Path(folder))
        run.train_epoch(0)  # warm-up
        logits = torch.cat([run.model(run.prepare(x.to(device))).detach() for x, _ in run.data.train])
        labels = torch.cat([y.to(device) for _, y in run.data.train])
        times: dict[str, list[float]] = {"A train epoch": [], "B validation": [], "C train metrics": []}
        for repeat in range(args.repeats):
            times["A train epoch"].append(timed(lambda: run.train_epoch(0)))
            times["B validation"].append(timed(lambda: run.validate(repeat, recorder)))
            times["C train metrics"].append(timed(lambda: classification_metrics(logits, labels)))
        recorder.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(device)},
        "overrides": args.overrides, "repeats": args.repeats,
        "median_seconds": medians,
        "validation_over_epoch": medians["B validation"] / medians["A train epoch"],
        "train_metrics_over_epoch": medians["C train metrics"] / medians["A train epoch"],
    }
    print(f"{'what':<20}{'median ms':>12}")
    for name, value in medians.items():
        print(f"{name:<20}{1000 * value:>12.2f}")
    print(f"validation / epoch      {result['validation_over_epoch']:.3f}")
    print(f"train metrics / epoch   {result['train_metrics_over_epoch']:.3f}")
    print(json.dumps(result["machine"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
