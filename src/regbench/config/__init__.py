"""The configuration: its typed schema (``schema.py``) and how a mistake in it is reported
(``errors.py``). ``from regbench.config import X`` finds both."""

from regbench.config.errors import ConfigError, check, one_line  # noqa: F401
from regbench.config.schema import *  # noqa: F401,F403
