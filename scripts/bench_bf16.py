"""bf16 autocast on the CPU against fp32: epoch time and final accuracy.

Speed: for each model, one built run on MNIST-format data (synthetic 28x28 pixels written as IDX
files, as scripts/bench.py does), training epochs alternating fp32 / bf16 (``torch.autocast("cpu",
dtype=torch.bfloat16)``, what ``trainer.amp`` switches on) after a warm-up of each, median seconds
per epoch and the ratio. Accuracy: the same model trained on the real digits data in fp32 and in
bf16 with the same seeds, test accuracy mean over seeds.

    python scripts/bench_bf16.py [--models lenet convnet resnet] [--repeats 5] [--out bf16.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench import (  # scripts/bench.py: IDX files, CPU name
    cpu_model,
    write_synthetic_mnist,
)

from regbench.cli.compose import compose_settings
from regbench.run.engine import Run

MODELS = ("lenet", "convnet", "resnet")


def epoch_times(model: str, data_root: Path, repeats: int, threads: int) -> dict[str, float]:
    run = Run.build(compose_settings([
        "dataset=mnist", f"dataset.root={data_root}", "dataset.download=false", "dataset.val_size=0",
        f"model={model}", "trainer.batch_size=128", f"trainer.num_threads={threads}",
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


def final_accuracy(model: str, amp: bool, seed: int, epochs: int, threads: int) -> float:
    run = Run.build(compose_settings([
        f"model={model}", f"seed={seed}", f"trainer.epochs={epochs}", f"trainer.num_threads={threads}",
        "trainer.progress=false"]))
    run.amp_dtype = torch.bfloat16 if amp else None
    run.fit()
    return run.evaluate(run.data.test).metrics("test")["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=10_000, help="MNIST-format training images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15, help="digits epochs for the accuracy check")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_mnist(Path(folder), args.samples, num_test=100)
        for model in args.models:
            medians = epoch_times(model, Path(folder), args.repeats, args.threads)
            accuracy = {name: statistics.fmean(final_accuracy(model, name == "bf16", seed, args.epochs, args.threads)
                                               for seed in range(args.seeds)) for name in ("fp32", "bf16")}
            rows.append({"model": model, "seconds_per_epoch": medians,
                         "speedup_bf16": medians["fp32"] / medians["bf16"], "digits_test_acc": accuracy})
    print(f"{'model':<10}{'fp32 s/epoch':>14}{'bf16 s/epoch':>14}{'fp32/bf16':>11}{'acc fp32':>10}{'acc bf16':>10}")
    for row in rows:
        t, a = row["seconds_per_epoch"], row["digits_test_acc"]
        print(f"{row['model']:<10}{t['fp32']:>14.3f}{t['bf16']:>14.3f}{row['speedup_bf16']:>11.2f}"
              f"{a['fp32']:>10.4f}{a['bf16']:>10.4f}")
    machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
               "python": sys.version.split()[0]}
    print(json.dumps(machine))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "samples": args.samples, "repeats": args.repeats,
                                        "seeds": args.seeds, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
