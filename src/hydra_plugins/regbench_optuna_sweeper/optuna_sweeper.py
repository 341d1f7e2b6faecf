"""Hydra's Optuna sweeper as regbench's searches use it (configs/hydra/sweeper/regbench_optuna.yaml):
a search in which no trial completed (each diverged or failed, as train.FailedTrial) ends in one
line instead of Optuna's "No trials are completed yet" traceback.

Hydra's plugin scan imports this module in every run: it imports no Optuna, and defines nothing
without the ``tune`` extra.
"""

from __future__ import annotations

from typing import Any, List

from hydra.errors import CompactHydraException

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # no tune extra: nothing to extend, and no warning from Hydra's scan
    OptunaSweeper = None


class NoTrialCompleted(CompactHydraException):
    """Hydra prints a CompactHydraException as its message alone, without a stack."""


if OptunaSweeper is not None:

    class RegbenchOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: List[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError as error:
                if "No trials are completed" not in str(error):
                    raise
                raise NoTrialCompleted(
                    "regbench: no trial of the search completed (each one diverged or failed: its "
                    "job folder's metrics.json says why); nothing to optimize") from None
