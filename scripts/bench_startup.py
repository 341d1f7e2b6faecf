"""Time outside training: the default job and a 6-job sweep, wall time against their own training.

Each case runs the real command in a fresh subprocess from an empty temporary working directory and
compares its wall time with the training + evaluation time its jobs recorded (the sum over
history.jsonl of ``train_seconds`` + ``eval_seconds``: every epoch's training and validation):

  default  ``python -m regbench`` (digits, the MLP, 30 epochs), issue 13's target: ratio <= 2.5;
  sweep    ``python -m regbench -m regularizer=none,dropout seed=0,1,2 trainer.epochs=10`` with
           Hydra's basic launcher (the 6 jobs one after another in one process), target <= 1.5;
  sweep_no_figures  the same with ``evaluation.figures=false`` (no test-phase figures).

The cases are interleaved over ``--repeats`` rounds; medians and their ratios are reported.
``--profile`` runs each case once more under cProfile and prints where the time outside training
goes (cumulative seconds of the run's phases; profiling inflates Python-heavy parts, so read these
as shares, not as timings).

    python scripts/bench_startup.py [--repeats 5] [--threads 1] [--cases default sweep ...]
                                    [--overrides key=value ...] [--profile] [--out startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cpu_model  # scripts/bench.py

SWEEP = ["-m", "regularizer=none,dropout", "seed=0,1,2", "trainer.epochs=10"]
CASES = {
    "default": [],
    "sweep": SWEEP,
    "sweep_no_figures": [*SWEEP, "evaluation.figures=false"],
}
TARGETS = {"default": 2.5, "sweep": 1.5, "sweep_no_figures": 1.5}
# The phases of a run outside its epochs whose cumulative time the profile reports.
FUNCTIONS = {
    "import regbench.train": ("train.py", "<module>"),
    "check the command line (compose)": ("command_line.py", "check_command_line"),
    "Run.build (data, model, optimizer)": ("engine.py", "build"),
    "Run.fit (epochs, incl. checkpoints)": ("engine.py", "fit"),
    "  checkpoints": ("checkpoint.py", "after_epoch"),
    "Run.test (test phase)": ("engine.py", "test"),
    "  calibration panel": ("engine.py", "calibrate"),
    "  figures": ("recorder.py", "log_test_figures"),
    "  reliability panel": ("recorder.py", "log_reliability_panel"),
    "  wrong-class views (heat-map, projector)": ("recorder.py", "log_wrong_class_views"),
    "RunRecorder (TensorBoard writer)": ("recorder.py", "__init__"),
}


def trained_seconds(cwd: Path) -> tuple[int, float]:
    """(jobs, sum of train_seconds + eval_seconds over every job's history.jsonl)."""
    histories = list(cwd.rglob("history.jsonl"))
    total = 0.0
    for path in histories:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            total += record["train_seconds"] + record["eval_seconds"]
    return len(histories), total


def run_case(args: list[str], threads: int, profile: Path | None = None) -> dict:
    """One command in a fresh process from an empty temporary folder: wall time and its jobs'
    recorded training + evaluation time."""
    with tempfile.TemporaryDirectory(prefix="regbench-startup-") as folder:
        cwd = Path(folder)
        command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                   "-m", "regbench", *args, f"trainer.num_threads={threads}", "trainer.progress=false"]
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - started
        jobs, trained = trained_seconds(cwd)
    return {"wall_seconds": wall, "train_eval_seconds": trained, "jobs": jobs}


def profile_phases(path: Path) -> dict[str, float]:
    stats = pstats.Stats(str(path)).stats  # (file, line, function) -> (cc, nc, tt, ct, callers)
    phases: dict[str, float] = {}
    for phase, (file_suffix, function) in FUNCTIONS.items():
        phases[phase] = sum(ct for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items()
                            if file.endswith(f"regbench/{file_suffix}") and name == function)
    total = max(ct for (_cc, _nc, _tt, ct, _callers) in stats.values())
    phases["whole process (profiled)"] = total
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="trainer.num_threads (1: comparable on a busy machine)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra overrides for every case (e.g. a shorter default job)")
    parser.add_argument("--profile", action="store_true", help="one more cProfile'd run per case")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    options = parser.parse_args()

    samples: dict[str, list[dict]] = {case: [] for case in options.cases}
    for round_index in range(options.repeats):
        for case in options.cases:
            result = run_case([*CASES[case], *options.overrides], options.threads)
            samples[case].append(result)
            print(f"round {round_index + 1}: {case:16s} wall {result['wall_seconds']:6.2f} s, "
                  f"training+evaluation {result['train_eval_seconds']:6.2f} s ({result['jobs']} jobs)",
                  flush=True)

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
               "python": sys.version.split()[0], "threads": options.threads}
    results: dict = {"machine": machine, "cases": {}}
    print(f"\n{machine['cpu']}, {machine['cores']} cores, trainer.num_threads={options.threads}, "
          f"{options.repeats} rounds, medians")
    print(f"{'case':16s} {'jobs':>4s} {'wall s':>8s} {'train+eval s':>13s} {'ratio':>6s} {'target':>7s}")
    for case, runs in samples.items():
        if not runs:
            continue
        wall = statistics.median(r["wall_seconds"] for r in runs)
        trained = statistics.median(r["train_eval_seconds"] for r in runs)
        ratios = [r["wall_seconds"] / r["train_eval_seconds"] for r in runs]
        ratio = statistics.median(ratios)
        results["cases"][case] = {"command": ["python", "-m", "regbench", *CASES[case], *options.overrides],
                                  "jobs": runs[0]["jobs"], "wall_seconds": wall,
                                  "train_eval_seconds": trained, "ratio": ratio, "ratios": ratios,
                                  "target": TARGETS[case], "runs": runs}
        print(f"{case:16s} {runs[0]['jobs']:4d} {wall:8.2f} {trained:13.2f} {ratio:6.2f} "
              f"{TARGETS[case]:7.1f}")

    if options.profile:
        for case in options.cases:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "profile.out"
                run_case([*CASES[case], *options.overrides], options.threads, profile=path)
                phases = profile_phases(path)
            results["cases"].setdefault(case, {})["profile_seconds"] = phases
            print(f"\n{case}: cumulative seconds under cProfile")
            for phase, seconds in phases.items():
                print(f"  {phase:45s} {seconds:7.2f}")

    if options.out:
        options.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {options.out}")


if __name__ == "__main__":
    main()
