"""Fixtures for the side-by-side tests: a real Triton 2.51 and a dl-inference worker
serving the same models (see models.py), started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dl_inference.testing import ServerProcess

from .models import write_our_repository, write_triton_repository
from .triton import TritonServer, skip_without_triton


@dataclass
class Pair:
    """Both servers, serving the same models."""

    triton: TritonServer
    ours: ServerProcess


@pytest.fixture(scope="session")
def triton_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Triton (python backend) and dl-inference (python backend) with models.py's models."""
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-differential")
    triton_repo = write_triton_repository(root / "triton")
    our_repo = write_our_repository(root / "ours")
    # The server runs here (triton_home checked): a failed start is this suite's fault (a
    # model Triton cannot load), so it is an error, not a skip.
    triton = TritonServer(triton_repo, root / "triton.log").start()
    try:
        with ServerProcess(["--model-repository", str(our_repo)]) as ours:
            yield Pair(triton=triton, ours=ours)
    finally:
        triton.stop()
