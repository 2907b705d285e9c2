"""bench/alternate_flush.py's arithmetic and served repository, without a load run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def alternate() -> ModuleType:
    return load_script("alternate_flush")


def test_only_full_load_seconds_count(alternate: ModuleType) -> None:
    windows = [
        [0, 0, 1.0],  # start-up: no calls
        [1, 0, 1.0],
        [0, 500, 1.0],  # the load starts (warm-up): left out
        [1, 2000, 1.0],  # left out too
        [0, 3000, 1.0],
        [1, 3300, 1.0],
        [0, 2900, 1.0],
        [1, 3400, 1.1],
        [0, 1000, 1.0],  # the load ends: left out
        [1, 0, 1.0],
    ]
    once, pieces, seconds = alternate.rates(windows)
    assert seconds == 4
    assert once == pytest.approx((3000 + 2900) / 2)
    assert pieces == pytest.approx((3300 + 3400 / 1.1) / 2)


def test_the_served_model_is_the_peers_file_with_batching(
    alternate: ModuleType, tmp_path: Path
) -> None:
    root = alternate.repository(tmp_path / "repo", "mlp")
    config = (root / "mlp" / "config.yaml").read_text()
    assert "dynamic_batching: true" in config and "max_queue_delay_ms: 2" in config
    assert (root / "mlp" / "1" / "model.pt").readlink() == Path("/tmp/peers/models/mlp/model.pt")
    assert "torch.jit.load" in (root / "mlp" / "1" / "model.py").read_text()
