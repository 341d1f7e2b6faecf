"""Hydra's Ray launcher, with the local Ray it starts reachable from this machine only.

``hydra/launcher=ray`` (configs/hydra/launcher/ray.yaml) names ``LocalRayLauncher``. With
``hydra.launcher.ray.init.address`` null it starts a Ray for the sweep, and Ray's defaults have the
GCS, the raylet, the dashboard and runtime-env agents and every worker listen on all interfaces (or
on the machine's address): anyone who reaches the machine could run code in it. Here they listen
on 127.0.0.1 only. Joining a running cluster (an address) is the user's choice and is left as given.

Hydra instantiates launchers from the ``hydra_plugins`` namespace only, and its plugin scan imports
this module in every run: it imports no Ray, and defines nothing without the ``ray`` extra.
"""

from __future__ import annotations

import os
from typing import Sequence

from omegaconf import DictConfig, open_dict

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
except ImportError:  # no ray extra: nothing to extend, and no warning from Hydra's scan
    RayLauncher = None

LOOPBACK = "127.0.0.1"
# "0": Ray takes the loopback address as its node's address, as it does on macOS and Windows; then
# ray.init keeps _node_ip_address=127.0.0.1 (otherwise it swaps it for the machine's address), and
# the GCS, raylet, agents and workers, started with it, bind to it. Ray reads it when imported.
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_to_loopback(init: DictConfig) -> None:
    """Make ``ray.init(**init)`` start a Ray that listens on 127.0.0.1 only. Must run before ray is
    imported: Hydra's Ray launcher imports it in ``launch``."""
    os.environ[RAY_CLUSTER_SWITCH] = "0"  # inherited by every process the local Ray starts
    with open_dict(init):
        init["_node_ip_address"] = LOOPBACK
        init["dashboard_host"] = LOOPBACK  # for include_dashboard=true


if RayLauncher is not None:
    class LocalRayLauncher(RayLauncher):
        """``RayLauncher`` whose local Ray (``ray.init.address`` null) listens on 127.0.0.1 only."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            if self.ray_cfg.init.get("address") is None:
                bind_to_loopback(self.ray_cfg.init)
            return super().launch(job_overrides, initial_job_idx)
