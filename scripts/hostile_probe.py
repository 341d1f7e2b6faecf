"""A hostile probe of regbench as users run it: every case of issue #22 (the second probe), each run
in its own temporary folder through the command line, with a verdict.

    python scripts/hostile_probe.py [--only 15] [--out probe.json]

A case holds when regbench does what the issue asks: one line and no traceback for a user mistake
or an ordinary fault, nothing finished lost or counted twice, no file it did not write deleted.
Prints one row per case (point, case, verdict, what was seen) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

FAST = ["trainer.epochs=2", "model.hidden_sizes=[32]", "evaluation.figures=false",
        "trainer.num_threads=1", "trainer.progress=false"]


@dataclass
class Seen:
    held: bool
    detail: str


def cli(args: list[str], cwd: Path, module: str = "regbench", timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line_refusal(result: subprocess.CompletedProcess, expected: str = "") -> Seen:
    lines = result.stderr.strip().splitlines()
    held = (result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr
            and expected in result.stderr)
    return Seen(held, f"exit {result.returncode}: {lines[-1][:160] if lines else '(no stderr)'}")


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def trained(cwd: Path, name: str, extra: list[str] = ()) -> Path:
    result = cli([*FAST, *extra, f"hydra.run.dir={name}"], cwd)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-500:])
    return cwd / name


def interrupt(args: list[str], cwd: Path, ready: Callable[[], bool], sig=signal.SIGINT,
              module: str = "regbench") -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def history_lines(folder: Path) -> int:
    path = folder / "history.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


# --- 1-10: silent wrong results and data loss ---------------------------------------------------

def refused_sweep_rerun(cwd: Path) -> Seen:
    sweep = ["-m", "regularizer=none,dropout", *FAST, "hydra.sweep.dir=sweep"]
    cli(sweep, cwd)
    rerun = cli([*sweep, "trainer.epochs=3"], cwd)
    summary = [line for line in rerun.stdout.splitlines() if line.startswith("sweep finished")]
    return Seen(rerun.returncode == 1 and bool(summary) and "completed" not in summary[0],
                f"exit {rerun.returncode}: {summary[0] if summary else rerun.stderr[-200:]}")


def relaunch_in_another_order(cwd: Path) -> Seen:
    cli(["-m", "regularizer=none,dropout", *FAST, "hydra.sweep.dir=sweep"], cwd)
    again = cli(["-m", "regularizer=dropout,none", *FAST, "hydra.sweep.dir=sweep"], cwd)
    jobs = sorted(p.parent.name for p in (cwd / "sweep").glob("*/spec.json"))
    return Seen(len(jobs) == 2 and again.returncode == 0,
                f"{len(jobs)} job folders after the relaunch: {', '.join(jobs)}")


def report_counts_a_copied_job_once(cwd: Path) -> Seen:
    cli(["-m", "regularizer=none,dropout", *FAST, "hydra.sweep.dir=sweep"], cwd)
    first = next((cwd / "sweep").glob("0_*"))
    shutil.copytree(first, cwd / "sweep" / "9_copy")
    report = cli(["sweep"], cwd, module="regbench.report")
    summary = cwd / "sweep" / "summary.md"
    text = summary.read_text() if summary.is_file() else ""
    rows = [line for line in text.splitlines() if line.startswith("| none")]
    return Seen(report.returncode == 0 and "several folders" in text and bool(rows)
                and rows[0].split("|")[2].strip() == "1", f"exit {report.returncode}; {rows[:1]}")


def corrupted_checkpoint(cwd: Path) -> Seen:
    import torch

    run = trained(cwd, "run", ["trainer.checkpoint_interval_s=0"])
    (run / "metrics.json").unlink()
    state = torch.load(run / "last.pt", weights_only=True)
    first = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][first][:1000] *= -1  # flip signs, checksum left as it was
    torch.save(state, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    result = cli([*FAST, "hydra.run.dir=run"], cwd)
    seen = one_line_refusal(result, "last.pt")
    seen.held &= (run / "last.pt").read_bytes() == before
    return seen


def checkpoint_false_on_resume(cwd: Path) -> Seen:
    args = ["trainer.epochs=12", "model.hidden_sizes=[256,256]", "evaluation.figures=false",
            "trainer.num_threads=1", "trainer.checkpoint_interval_s=0", "hydra.run.dir=run"]
    interrupt(args, cwd, lambda: history_lines(cwd / "run") >= 3)
    cli([*args, "trainer.checkpoint=false"], cwd)
    left = cwd / "run" / "last.pt"
    if not left.is_file():
        return Seen(True, "no last.pt after the completed resume")
    import torch
    epoch = torch.load(left, weights_only=True).get("epoch")
    return Seen(epoch == 12, f"last.pt left at epoch {epoch}")


def image_folder(root: Path, classes: int = 2, per_class: int = 15, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def symlink_loop(cwd: Path) -> Seen:
    root = image_folder(cwd / "images")
    (root / "train" / "class0" / "loop").symlink_to("../class0")
    result = cli(["dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=4", *FAST,
                  "hydra.run.dir=run"], cwd, env={"REGBENCH_CACHE": str(cwd / "cache")})
    output = result.stdout + result.stderr
    counted_once = "decoded 60 images" in output or "30 " in output
    refused = result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    return Seen(refused or (result.returncode == 0 and counted_once),
                f"exit {result.returncode}: {[l for l in output.splitlines() if 'decoded' in l or 'loop' in l][:1]}")


def dip_16_bit(cwd: Path) -> Seen:
    from regbench.datasets.imagefolder import load_rgb

    path = cwd / "gray16.png"
    pixels = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(pixels).save(path)  # uint16: a 16-bit grayscale PNG
    image = np.asarray(load_rgb(path))
    return Seen(0 < image.mean() < 250 and image.min() < 10, f"mean {image.mean():.1f}, min {image.min()}")


def user_tmp_file_kept(cwd: Path) -> Seen:
    (cwd / "run").mkdir()
    mine = cwd / "run" / ".notes.tmp"
    mine.write_text("mine")
    trained(cwd, "run")
    return Seen(mine.is_file(), "kept" if mine.is_file() else "deleted")


def stale_image_cache(cwd: Path) -> Seen:
    root = image_folder(cwd / "images")
    env = {"REGBENCH_CACHE": str(cwd / "cache")}
    args = ["dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=4", *FAST]
    cli([*args, "hydra.run.dir=a"], cwd, env=env)
    target = root / "train" / "class0" / "0.png"
    stat = target.stat()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(target)  # same size: PNG of zeros differs
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = cli([*args, "hydra.run.dir=b"], cwd, env=env)
    output = again.stdout + again.stderr
    return Seen("decoded" in output, "decoded again" if "decoded" in output else "old cache read")


def ctrl_c_joblib_sweep(cwd: Path) -> Seen:
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
            "trainer.epochs=40", "model.hidden_sizes=[256,256]", "evaluation.figures=false",
            "trainer.num_threads=1", "trainer.checkpoint_interval_s=0", "hydra.sweep.dir=sweep"]
    result = interrupt(args, cwd, lambda: any(history_lines(f) >= 3 for f in (cwd / "sweep").glob("*_*")))
    jobs = [f for f in (cwd / "sweep").glob("*_*") if f.is_dir()]
    kept = all((f / "last.pt").is_file() and metrics(f).get("status") == "interrupted"
               for f in jobs if (f / "metrics.json").is_file())
    started = [f for f in jobs if history_lines(f) > 0]
    return Seen(kept and bool(started) and "Traceback" not in result.stderr,
                f"exit {result.returncode}; {len(started)} started jobs kept their epochs: {kept}; "
                f"stderr tail: {result.stderr.strip().splitlines()[-1:]}")


def logit_norm_default(cwd: Path) -> Seen:
    run = cli(["regularizer=logit_norm", "trainer.epochs=10", "evaluation.figures=false",
               "hydra.run.dir=run"], cwd)
    accuracy = metrics(cwd / "run").get("test/acc") if run.returncode == 0 else None
    return Seen(accuracy is not None and accuracy > 0.9, f"test accuracy {accuracy}")


def did_not_learn_flag(cwd: Path) -> Seen:
    cli(["optimizer.lr=1e-9", *FAST, "hydra.run.dir=run"], cwd)
    flag = metrics(cwd / "run").get("did_not_learn")
    return Seen(flag is True, f"did_not_learn={flag}, train/acc={metrics(cwd / 'run').get('train/acc')}")


# --- 11-14: security -------------------------------------------------------------------------------

def umask_honoured(cwd: Path) -> Seen:
    result = subprocess.run(["bash", "-c", f"umask 077 && {sys.executable} -m regbench "
                             + " ".join(FAST) + " hydra.run.dir=run"], cwd=cwd, capture_output=True)
    mode = oct((cwd / "run" / "metrics.json").stat().st_mode & 0o777) if result.returncode == 0 else None
    return Seen(mode == "0o600", f"metrics.json mode {mode}")


def quoted_commands(cwd: Path) -> Seen:
    result = cli([*FAST, "hydra.run.dir='a b/$(touch pwned)'"], cwd)
    line = next((l for l in result.stdout.splitlines() if l.startswith("see curves:")), "")
    pasted = subprocess.run(["bash", "-c", f"echo {line.split('--logdir ', 1)[-1]}"], cwd=cwd,
                            capture_output=True)
    return Seen(pasted.returncode == 0 and not (cwd / "pwned").exists(), line)


def rerun_warning_in_readme(_: Path) -> Seen:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return Seen("--experimental-rerun" in text and "executes" in text, "README says it executes the file")


# --- 15-17: one line instead of a traceback ----------------------------------------------------

def edited_file(name: str, content: str, expected: str) -> Callable[[Path], Seen]:
    def case(cwd: Path) -> Seen:
        run = trained(cwd, "run")
        if name == "spec.json":
            spec = json.loads((run / name).read_text())
            spec["identity"] = json.loads(content)
            (run / name).write_text(json.dumps(spec))
        else:
            (run / name).write_text(content)
        before = (run / name).read_bytes()
        seen = one_line_refusal(cli([*FAST, "hydra.run.dir=run"], cwd), expected)
        seen.held &= (run / name).read_bytes() == before
        return seen
    return case


def refused(args: list[str], expected: str = "", module: str = "regbench", setup=None) -> Callable[[Path], Seen]:
    def case(cwd: Path) -> Seen:
        if setup:
            setup(cwd)
        result = cli(args, cwd, module=module)
        seen = one_line_refusal(result, expected)
        if module == "regbench" and not args[0].startswith("-"):
            seen.held &= not list((cwd / "outputs").glob("runs/*/*"))  # and no failed folder left
        return seen
    return case


def read_only_run_folder(cwd: Path) -> Seen:
    folder = cwd / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        return Seen(True, "skipped: cannot mount a read-only tmpfs here")
    try:
        return one_line_refusal(cli([*FAST, f"hydra.run.dir={folder}/run"], cwd), "read-only")
    finally:
        subprocess.run(["umount", str(folder)])


def fold_malformed_overrides(cwd: Path) -> Seen:
    run = trained(cwd, "run", ["regularizer=batchnorm"])
    (run / ".hydra" / "overrides.yaml").write_text("a: [\n")
    seen = one_line_refusal(cli(["run"], cwd, module="regbench.fold"), "overrides.yaml")
    seen.held &= "hydra.run.dir" not in seen.detail
    return seen


def ctrl_c_at_start(cwd: Path) -> Seen:
    started = time.monotonic()
    result = interrupt(FAST, cwd, lambda: time.monotonic() - started > 0.5)  # inside the imports
    lines = result.stderr.strip().splitlines()
    return Seen(result.returncode == 130 and len(lines) == 1 and "Traceback" not in result.stderr,
                f"exit {result.returncode}: {lines[-1:] }")


def ctrl_c_in_report(cwd: Path) -> Seen:
    cli(["-m", "regularizer=none,dropout", "seed=0,1", *FAST, "hydra.sweep.dir=sweep"], cwd)
    result = interrupt(["sweep"], cwd, lambda: (cwd / "sweep" / "summary.csv").is_file(),
                       module="regbench.report")  # its first file written: the figures are next
    torn = list((cwd / "sweep").rglob("*.regbench-*.tmp"))
    lines = result.stderr.strip().splitlines()
    return Seen(result.returncode in (0, 130) and "Traceback" not in result.stderr and not torn,
                f"exit {result.returncode}: {lines[-1:]}; temporaries left: {len(torn)}")


def optuna_failed_trial(cwd: Path) -> Seen:
    result = cli(["hparams_search=label_smoothing", "hydra.sweeper.n_trials=2", "optimizer.lr=1e30",
                  *FAST, "hydra.sweep.dir=search"], cwd)
    return Seen("Traceback" not in result.stderr and result.returncode in (0, 1),
                f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")


def long_checkpoint_history(cwd: Path) -> Seen:
    import torch

    run = trained(cwd, "run", ["trainer.epochs=3", "trainer.checkpoint_interval_s=0"])
    (run / "metrics.json").unlink()
    from regbench.run.checkpoint import save_checkpoint

    state = torch.load(run / "last.pt", weights_only=True)
    identity = state.pop("identity")
    state.pop("checksum", None)
    state["history"] = [{**record, "epoch": index + 1}
                        for index, record in enumerate(state["history"] * 7)]
    state["epoch"] = len(state["history"])
    save_checkpoint(run / "last.pt", state, identity)  # a valid checksum: only the history is wrong
    return one_line_refusal(cli([*FAST, "trainer.epochs=3", "hydra.run.dir=run"], cwd), "last.pt")


def truncated_calibration(cwd: Path) -> Seen:
    cli(["-m", "regularizer=none,dropout", "seed=0,1", *FAST, "hydra.sweep.dir=sweep"], cwd)
    target = next((cwd / "sweep").glob("0_*")) / "test_calibration.json"
    target.write_text(target.read_text()[:100])
    result = cli(["sweep"], cwd, module="regbench.report")
    said = "test_calibration.json" in result.stdout + result.stderr + \
        "".join(p.read_text() for p in (cwd / "sweep").glob("*.md"))
    return Seen(said, f"exit {result.returncode}; the truncated file named: {said}")


def baseline_matching_every_group(cwd: Path) -> Seen:
    cli(["-m", "regularizer=none,dropout", *FAST, "hydra.sweep.dir=sweep"], cwd)
    result = cli(["sweep", "--baseline", "trainer.epochs=2"], cwd, module="regbench.report")
    text = result.stdout + result.stderr
    return Seen("2 groups" in text or "matched 2" in text or "every group" in text,
                f"exit {result.returncode}: {text.strip().splitlines()[-1:]}")


def fold_from_another_folder(cwd: Path) -> Seen:
    trained(cwd, "run", ["regularizer=batchnorm"])
    (cwd / "elsewhere").mkdir()
    result = cli(["../run", "--repeats", "3"], cwd / "elsewhere", module="regbench.fold")
    return Seen(result.returncode == 0, f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")


# --- 18-20: friction ------------------------------------------------------------------------------

def same_command_resumes(cwd: Path) -> Seen:
    args = ["trainer.epochs=12", "model.hidden_sizes=[256,256]", "evaluation.figures=false",
            "trainer.num_threads=1", "trainer.checkpoint_interval_s=0"]
    interrupt(args, cwd, lambda: any(history_lines(f) >= 2 for f in (cwd / "outputs/runs").glob("*/*")))
    again = cli(args, cwd)
    folders = list((cwd / "outputs/runs").glob("*/*"))
    return Seen(len(folders) == 1 and metrics(folders[0])["status"] == "completed"
                and "resuming" in again.stderr, f"{len(folders)} run folder(s); {again.stderr.strip()[:120]}")


def no_lock_file_left(cwd: Path) -> Seen:
    run = trained(cwd, "run")
    return Seen(not (run / ".regbench.lock").exists(), "no .regbench.lock")


def split_sizes_logged(cwd: Path) -> Seen:
    result = cli([*FAST, "hydra.run.dir=run"], cwd)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "val" in line and "test" in line
             and "train" in line and any(c.isdigit() for c in line)]
    return Seen(bool(lines), lines[0][:120] if lines else "no line with the split sizes")


def calibrator_warning(cwd: Path) -> Seen:
    root = image_folder(cwd / "images")
    result = cli(["dataset=imagefolder", f"dataset.root={root}", *FAST, "hydra.run.dir=run"], cwd,
                 env={"REGBENCH_CACHE": str(cwd / "cache")})
    text = result.stdout + result.stderr
    return Seen("fewer than" in text and "calibrat" in text,
                next((l for l in text.splitlines() if "calibrat" in l.lower()), "no warning")[:140])


def mnist_offline_message(cwd: Path) -> Seen:
    result = cli(["dataset=mnist", "dataset.download=false", f"dataset.root={cwd / 'none'}", *FAST], cwd)
    seen = one_line_refusal(result, "dataset.root")
    seen.held &= "REGBENCH_DATA" in result.stderr
    return seen


CASES: list[tuple[int, str, Callable[[Path], Seen]]] = [
    (1, "a sweep rerun whose jobs are all refused exits 1", refused_sweep_rerun),
    (2, "a relaunch with the values in another order finds its job folders", relaunch_in_another_order),
    (2, "the report counts a copied job folder once", report_counts_a_copied_job_once),
    (3, "a last.pt with 1000 flipped signs is refused, untouched", corrupted_checkpoint),
    (4, "checkpoint=false on resume leaves no stale last.pt", checkpoint_false_on_resume),
    (5, "a symlink loop does not multiply images", symlink_loop),
    (6, "a 16-bit PNG is scaled, not clipped to white", dip_16_bit),
    (7, "a user's .*.tmp file in the run folder is kept", user_tmp_file_kept),
    (8, "an image rewritten with its old size and mtime is decoded again", stale_image_cache),
    (9, "Ctrl-C on a joblib sweep keeps every job's finished epochs", ctrl_c_joblib_sweep),
    (10, "logit_norm at its defaults trains the default MLP", logit_norm_default),
    (10, "a run that cannot learn is flagged did_not_learn", did_not_learn_flag),
    (12, "files follow the umask (077 -> 0600)", umask_honoured),
    (13, "a printed command with $(...) in the folder runs nothing", quoted_commands),
    (14, "README warns that --experimental-rerun executes its pickle", rerun_warning_in_readme),
    (15, 'metrics.json {"status":"completed"}', edited_file("metrics.json", '{"status": "completed"}', "metrics.json")),
    (15, "spec.json identity [1,2]", edited_file("spec.json", "[1, 2]", "spec.json")),
    (15, "spec.json identity {}", edited_file("spec.json", "{}", "spec.json")),
    (15, "hydra.run.dir names an existing file", refused([*FAST, "hydra.run.dir=taken"], "taken",
                                                         setup=lambda cwd: (cwd / "taken").write_text("x"))),
    (15, "a run folder on a read-only file system", read_only_run_folder),
    (15, "regbench.fold on a malformed overrides.yaml", fold_malformed_overrides),
    (15, "Ctrl-C in the first seconds", ctrl_c_at_start),
    (15, "Ctrl-C during regbench.report", ctrl_c_in_report),
    (15, "--help with a bad override", refused(["--help", "regularizer=bogus"], "bogus")),
    (15, "--info with a bad override", refused(["--info", "regularizer=bogus"], "bogus")),
    (15, "an Optuna trial that diverges", optuna_failed_trial),
    (15, "overrides placed after flags are checked", refused(["trainer.epochs=2", "-m", "trainer.batch_size=0"], "batch_size")),
    (15, "a bad value with --config-name", refused(["--config-name", "config", "trainer.epochs=x"], "trainer.epochs")),
    (16, "a checkpoint whose history is longer than trainer.epochs", long_checkpoint_history),
    (16, "a truncated test_calibration.json is reported", truncated_calibration),
    (17, "--baseline matching every group says so", baseline_matching_every_group),
    (17, "regbench.fold from another folder (relative dataset.root)", fold_from_another_folder),
    (18, "the same command resumes after Ctrl-C", same_command_resumes),
    (19, "a refused command (bad device) leaves no run folder", refused(["trainer.device=cuda:7", *FAST], "cuda")),
    (19, "a refused command (none + dropout) leaves no run folder", refused(["regularizer=[none,dropout]", *FAST], "none")),
    (19, "a finished run keeps no lock file", no_lock_file_left),
    (20, "trainer.epoch=3 suggests trainer.epochs", refused(["trainer.epoch=3"], "did you mean trainer.epochs")),
    (20, "a comma list without brackets gets the bracketed form", refused(["regularizer=dropout,label_smoothing"], "[dropout,label_smoothing]")),
    (20, "every run logs its split sizes", split_sizes_logged),
    (20, "a calibrator fitted on a small validation split warns", calibrator_warning),
    (20, "the offline MNIST message names dataset.root and $REGBENCH_DATA", mnist_offline_message),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, nargs="*", help="issue points to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("hostile_probe.json"))
    args = parser.parse_args()
    # A probe started in the background (nohup ... &) inherits SIGINT ignored, and so would every
    # command it starts: Ctrl-C cases need the default disposition in the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rows = []
    for point, name, case in CASES:
        if args.only and point not in args.only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            try:
                seen = case(Path(folder))
            except Exception as error:  # noqa: BLE001 (a case that crashes is a finding, not a stop)
                seen = Seen(False, f"probe error: {type(error).__name__}: {str(error)[-200:]}")
            rows.append({"point": point, "case": name, "verdict": "held" if seen.held else "FAILED",
                         "seen": seen.detail, "seconds": round(time.perf_counter() - started, 1)})
        print(f"{point:>3}  {rows[-1]['verdict']:<6}  {name}: {seen.detail}", flush=True)
    held = sum(row["verdict"] == "held" for row in rows)
    print(f"\n{held} of {len(rows)} cases held ({platform.node()}, {os.cpu_count()} cores)")
    args.out.write_text(json.dumps({"machine": platform.platform(), "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
