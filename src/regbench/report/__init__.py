"""A sweep's results at a glance: ``python -m regbench.report <sweep folder>`` / ``regbench-report``."""

from regbench.report.core import *  # noqa: F401,F403  (interim, while report/ is split)
from regbench.report.core import main  # noqa: F401
