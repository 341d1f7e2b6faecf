"""src/hydra_plugins/regbench_ray_launcher: the local Ray of hydra/launcher=ray listens on 127.0.0.1
only; joining a cluster is left as the user asked. (tests/test_cluster.py checks a real sweep's
sockets.)"""

from __future__ import annotations

import importlib.util
import os

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="Hydra's Ray launcher is not installed: pip install -e '.[ray]' -c constraints.txt")


def launched_init(monkeypatch, address):
    """The ray.init arguments LocalRayLauncher hands to Hydra's launcher (which is not run)."""
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
    from hydra_plugins.regbench_ray_launcher.local_ray_launcher import LocalRayLauncher
    handed = {}
    monkeypatch.setattr(RayLauncher, "launch",
                        lambda self, *args: handed.update(OmegaConf.to_container(self.ray_cfg.init)))
    launcher = LocalRayLauncher(ray=OmegaConf.create({"init": {"address": address, "num_cpus": 2},
                                                      "remote": {"num_cpus": 1}}))
    launcher.launch([["seed=1"]], initial_job_idx=0)
    return handed


def test_a_local_ray_is_started_on_the_loopback_address_whatever_the_environment_says(monkeypatch):
    from hydra_plugins.regbench_ray_launcher.local_ray_launcher import RAY_CLUSTER_SWITCH
    monkeypatch.setenv(RAY_CLUSTER_SWITCH, "1")  # a user's environment asking for a cluster node
    init = launched_init(monkeypatch, address=None)
    assert init == {"address": None, "num_cpus": 2, "_node_ip_address": "127.0.0.1",
                    "dashboard_host": "127.0.0.1"}
    assert os.environ[RAY_CLUSTER_SWITCH] == "0"  # else ray.init swaps 127.0.0.1 for the machine's IP


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379"])
def test_joining_a_ray_cluster_is_left_as_the_user_asked(monkeypatch, address):
    from hydra_plugins.regbench_ray_launcher.local_ray_launcher import RAY_CLUSTER_SWITCH
    monkeypatch.delenv(RAY_CLUSTER_SWITCH, raising=False)
    assert launched_init(monkeypatch, address=address) == {"address": address, "num_cpus": 2}
    assert RAY_CLUSTER_SWITCH not in os.environ
