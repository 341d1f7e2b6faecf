"""datasets/base.py: the dataset files a run needs, fetched once when parallel jobs need them at once."""

from __future__ import annotations

import threading
import time

from regbench.config import DatasetConfig
from regbench.datasets.base import require_files


def test_jobs_starting_at_once_download_missing_files_once_and_all_find_them(tmp_path):
    cfg = DatasetConfig(name="mnist", root=str(tmp_path), download=True)
    directory = tmp_path / "MNIST" / "raw"
    downloads, failures = [], []

    def fetch() -> None:  # torchvision's downloader, as slow as a real one relative to the check
        downloads.append(threading.get_ident())
        time.sleep(0.3)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "train-images-idx3-ubyte").write_bytes(b"idx")

    def job() -> None:
        try:
            require_files(cfg, directory, ["train-images-idx3-ubyte"], fetch, "by hand")
        except Exception as error:  # noqa: BLE001 (collected, asserted below)
            failures.append(error)

    jobs = [threading.Thread(target=job) for _ in range(3)]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join()
    assert failures == [] and len(downloads) == 1
    assert sorted(path.name for path in (tmp_path / "MNIST").iterdir()) == ["raw"]  # lock removed
