"""Shared fixtures for the deploy/ tests: the manifest validator and rendered overlays."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"


def _load_validator() -> ModuleType:
    # scripts/ is not a package; load the file the way CI runs it.
    path = ROOT / "scripts" / "validate_manifests.py"
    spec = importlib.util.spec_from_file_location("validate_manifests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_manifests", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def vm() -> ModuleType:
    """scripts/validate_manifests.py as a module."""
    return _load_validator()


@pytest.fixture(scope="session")
def rendered(vm: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """Every overlay of deploy/k8s/overlays, rendered once: name -> objects."""
    return {path.name: vm.render(path) for path in sorted(vm.OVERLAYS.iterdir()) if path.is_dir()}
