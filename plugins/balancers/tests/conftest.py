"""Fixtures for testing balancers alone."""

from __future__ import annotations

import pytest

from dl_inference.kernel.plugins import PluginHost


@pytest.fixture
def host() -> PluginHost:
    """A fresh plugin host with the installed plugins (the balancers among them)."""
    return PluginHost().load()
