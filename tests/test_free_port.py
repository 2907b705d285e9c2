"""dl_inference.testing.free_port: ports asked for one server's listeners differ."""

from __future__ import annotations

import collections
import socket
from typing import Any

import pytest

from dl_inference.testing import free_port, server_process


class ProbeSocket:
    """A socket whose bind(0) gets the next port of a script, as the kernel may hand the
    same ephemeral port out twice once the probe socket is closed."""

    script: list[int] = []

    def __enter__(self) -> ProbeSocket:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def bind(self, _: Any) -> None:
        self.port = ProbeSocket.script.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_offers_again_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_process.socket, "socket", ProbeSocket)
    monkeypatch.setattr(server_process, "_handed_out", collections.deque(maxlen=8))
    ProbeSocket.script = [40875, 40875, 40876]
    # A Triton started with the same gRPC and metrics port exits at once (seen in CI).
    assert [free_port(), free_port()] == [40875, 40876]


def test_free_ports_are_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
