"""CPU threads on a busy machine: epoch time by thread count, OpenMP wait policy and background load.

Every configuration runs in a fresh subprocess (OpenMP reads OMP_WAIT_POLICY once, when torch
starts its thread pool), trains ``--epochs`` epochs of one model on MNIST-format data (synthetic
28x28 IDX files, as scripts/bench.py) and reports the median epoch time. ``--background-load N``
values start N busy-looping processes (what other users' jobs do to a shared machine) for the
duration of each measurement. Configurations are interleaved over ``--repeats`` rounds.

    python scripts/bench_threads.py [--models mlp lenet resnet] [--background-load 0 2] [--out t.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import write_synthetic_mnist  # scripts/bench.py: MNIST-format IDX files

WAIT_POLICIES = ("ACTIVE", "PASSIVE")  # libgomp's: spin while waiting, or sleep at once

# The measured child: build a run, time a few epochs, print the median as JSON.
CHILD = """
import json, statistics, sys, time
from regbench.cli.compose import compose_settings
from regbench.run.engine import Run
root, model, threads, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run = Run.build(compose_settings(["dataset=mnist", f"dataset.root={root}", "dataset.download=false",
    "dataset.val_size=0", f"model={model}", "trainer.batch_size=128", f"trainer.num_threads={threads}",
    "trainer.progress=false", f"trainer.epochs={epochs + 1}"]))
run.train_epoch(0)
times = []
for epoch in range(1, epochs + 1):
    started = time.perf_counter(); run.train_epoch(epoch); times.append(time.perf_counter() - started)
print(json.dumps({"median": statistics.median(times)}))
"""


def busy_processes(count: int) -> list[subprocess.Popen]:
    """Processes that keep a core busy until killed (bounded: they stop by themselves after 1 h)."""
    loop = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]


def measure(root: Path, model: str, threads: int, policy: str, load: int, epochs: int) -> float:
    background = busy_processes(load)
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        result = subprocess.run([sys.executable, "-c", CHILD, str(root), model, str(threads), str(epochs)],
                                env=env, capture_output=True, text=True, timeout=1800, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])["median"]
    finally:
        for process in background:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "resnet"])
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--background-load", nargs="+", type=int, default=[0, os.cpu_count() or 1])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configs = list(itertools.product(args.models, args.threads, WAIT_POLICIES, args.background_load))
    times: dict[tuple, list[float]] = {config: [] for config in configs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_mnist(Path(folder), args.samples, num_test=100)
        for _ in range(args.repeats):
            for config in configs:  # interleaved: every configuration once per round
                times[config].append(measure(Path(folder), *config, epochs=args.epochs))
    rows = [{"model": m, "threads": t, "wait_policy": p, "background_load": n,
             "median_seconds_per_epoch": statistics.median(times[(m, t, p, n)])}
            for m, t, p, n in configs]
    print(f"{'model':<8}{'threads':>8}{'policy':>9}{'load':>6}{'s/epoch':>10}")
    for row in rows:
        print(f"{row['model']:<8}{row['threads']:>8}{row['wait_policy']:>9}{row['background_load']:>6}"
              f"{row['median_seconds_per_epoch']:>10.3f}")
    machine = {"cores": os.cpu_count(), "load_average_before": load_before,
               "load_average_after": os.getloadavg()}
    print(json.dumps(machine))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "samples": args.samples, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
