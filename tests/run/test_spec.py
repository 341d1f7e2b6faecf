"""What a run is (run/spec.py): the result-neutral keys have one source."""

from __future__ import annotations

import yaml

from regbench.cli.compose import config_dir
from regbench.run.spec import RESULT_NEUTRAL_KEYS, RESULT_NEUTRAL_PREFIXES


def test_sweep_folder_names_leave_out_exactly_the_result_neutral_keys():
    """configs/config.yaml's exclude_keys name a sweep's job folders; spec.RESULT_NEUTRAL_KEYS
    decides a run's identity. If they differ, a resumed sweep looks for another folder than the one
    its identity check accepts."""
    config = yaml.safe_load((config_dir() / "config.yaml").read_text())
    exclude_keys = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    # The logger group's keys are neutral by their prefix (spec.RESULT_NEUTRAL_PREFIXES).
    by_prefix = [key for key in exclude_keys
                 if key == "logger" or key.startswith(RESULT_NEUTRAL_PREFIXES)]
    assert by_prefix == ["logger", "logger.mlflow.tracking_uri", "logger.mlflow.experiment_name"]
    assert sorted(set(exclude_keys) - set(by_prefix)) == sorted(RESULT_NEUTRAL_KEYS)
    assert len(exclude_keys) == len(set(exclude_keys))
