"""Which engine serves a listener: its config key, or the environment variable that
overrides it (so that a test suite can run every server on one engine)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dl_inference.spi.errors import ConfigError


def chosen_engine(variable: str, configured: str, engines: Sequence[str], what: str) -> str:
    """``$variable`` when set, else ``configured``; a ConfigError for an unknown name."""
    engine = os.environ.get(variable, "").strip() or configured
    if engine not in engines:
        raise ConfigError(
            f"{variable}={engine!r}: unknown {what} engine (one of {', '.join(engines)})"
        )
    return engine
