"""Look at a sweep in TensorBoard as a user does: headless-Chromium screenshots of its tabs.

    python scripts/screenshot_tensorboard.py LOGDIR [--out docs] [--port 0] [--width 1600]
        [--height 1000] [--tabs time_series hparams ...]

Starts ``tensorboard --logdir LOGDIR`` (a sweep folder, or ``outputs``) bound to 127.0.0.1 only,
waits until it has loaded the runs, and saves one PNG per tab (Time Series, the landing tab;
Scalars; Custom Scalars; Images; HParams; Text) into ``--out`` as ``tensorboard_<tab>.png``, each
as a browser window of ``--width`` x ``--height`` pixels shows it on opening, shrunk to a palette
PNG so each stays small. Needs Chromium (Debian: ``apt-get install chromium``) and Pillow (a
matplotlib dependency). Make the sweep first, e.g.

    python -m regbench -m regularizer=none,dropout,label_smoothing seed=0,1 trainer.epochs=8 \\
        evaluation.figures=false hydra.sweep.dir=/tmp/tbsweep && python -m regbench.report /tmp/tbsweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

# TensorBoard's URLs of each tab (the plugin id after "#").
TABS = {"time_series": "timeseries", "scalars": "scalars", "custom_scalars": "custom_scalars",
        "images": "images", "hparams": "hparams", "text": "text"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Milliseconds Chromium lets the page's scripts run before the screenshot (TensorBoard's UI
# fetches its data after loading).
RENDER_BUDGET_MS = 15000
# Time Series draws its charts with WebGL in a worker, which headless Chromium's virtual time does
# not wait for (some charts came out empty, others not, from one run to the next); TensorBoard's
# forceSVG flag draws them in the page instead. The other tabs ignore it.
URL_QUERY = "?forceSVG=true"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("screenshot_tensorboard: no Chromium found (apt-get install chromium)")


def wait_for_runs(port: int, timeout: float = 120) -> list[str]:
    """TensorBoard's run list, once it has read at least one run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                runs = json.load(response)
            if runs:
                return runs
        except OSError:
            pass
        time.sleep(1)
    sys.exit("screenshot_tensorboard: TensorBoard did not load any run in time")


def screenshot(chromium: str, url: str, target: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}",
                        f"--user-data-dir={profile}",
                        f"--virtual-time-budget={RENDER_BUDGET_MS}", f"--screenshot={target}", url],
                       check=True, capture_output=True, timeout=180)


def shrink(path: Path, colors: int = 128) -> None:
    """A palette PNG: TensorBoard's flat UI needs few colours; 3-5x smaller than RGB."""
    image = Image.open(path).convert("RGB")
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--width", type=int, default=1600, help="browser window width (pixels)")
    parser.add_argument("--height", type=int, default=1000, help="browser window height (pixels)")
    parser.add_argument("--tabs", nargs="+", choices=list(TABS), default=list(TABS))
    args = parser.parse_args()
    chromium = find_chromium()
    port = args.port or free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.sweep),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs = wait_for_runs(port)
        print(f"TensorBoard on 127.0.0.1:{port}: {len(runs)} runs")
        for name in args.tabs:
            target = args.out / f"tensorboard_{name}.png"
            screenshot(chromium, f"http://127.0.0.1:{port}/{URL_QUERY}#{TABS[name]}", target,
                       (args.width, args.height))
            shrink(target)
            print(f"{target}: {target.stat().st_size / 1024:.0f} KB")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
