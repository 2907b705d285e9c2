"""DNS discovery against a real DNS server: Debian's dnsmasq on 127.0.0.1 with several records.

One name carries one A record per node, as a Kubernetes headless Service gives. The route
follows the records as they change; the gateway asks dnsmasq through
``discovery.nameserver`` (the system resolver is fixed to port 53 and /etc/resolv.conf).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dl_inference.gateway import Gateway
from dl_inference.gateway.dns import DnsError, lookup
from dl_inference.kernel.config import parse_server_config
from dl_inference.kernel.plugins import PluginHost

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
pytestmark = pytest.mark.skipif(
    not Path(DNSMASQ).exists(), reason="needs Debian's dnsmasq (apt-get install dnsmasq)"
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_and_tcp_port() -> int:
    """A port free for both: dnsmasq binds TCP on its DNS port too, and exits if it cannot."""
    while True:
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class Dnsmasq:
    """dnsmasq answering only from a hosts file of ours; SIGHUP makes it re-read the file."""

    def __init__(self, folder: Path) -> None:
        self.hosts = folder / "hosts"
        self.log = folder / "dnsmasq.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, *addresses: str) -> None:
        lines = [f"{address} workers.dli.test\n" for address in addresses]
        lines.append("127.0.0.9 other.dli.test\n")
        self.hosts.write_text("".join(lines))
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def start(self, attempts: int = 5) -> None:
        """Start on a free port; another process may take the port first, so try again then."""
        for _ in range(attempts):
            self.port = free_udp_and_tcp_port()
            self.process = self._launch()
            if self._listening():
                return
            self.process.kill()
            self.process.wait(10)
        raise AssertionError(f"dnsmasq did not start: {self.log.read_text().strip()}")

    def _listening(self) -> bool:
        """True once it answers a query; a port held by another process shows as an exit."""
        assert self.process is not None
        for _ in range(50):
            if self.process.poll() is not None:
                return False
            try:
                asyncio.run(lookup("other.dli.test", ("127.0.0.1", self.port), timeout=0.2))
                return self.process.poll() is None
            except DnsError:
                time.sleep(0.05)
        return False

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [
                    DNSMASQ,
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    f"--addn-hosts={self.hosts}",
                    f"--port={self.port}",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--user=root",
                    "--pid-file=",
                    "--log-facility=-",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path)
    server.write("127.0.0.1", "127.0.0.2", "127.0.0.3")
    server.start()
    yield server
    server.stop()


async def wait_for_records(dns: Dnsmasq, count: int) -> list[str]:
    for _ in range(200):
        try:
            found = await lookup("workers.dli.test", ("127.0.0.1", dns.port), timeout=0.5)
        except DnsError:
            found = []
        if len(found) == count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"dnsmasq never served {count} records: {dns.log.read_text().strip()}")


async def test_lookup_returns_every_record(dns: Dnsmasq) -> None:
    assert await wait_for_records(dns, 3) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert await lookup("other.dli.test", ("127.0.0.1", dns.port)) == ["127.0.0.9"]


async def test_a_route_follows_the_records(dns: Dnsmasq) -> None:
    await wait_for_records(dns, 3)
    config = parse_server_config(
        {
            "routes": [
                {
                    "model": "m",
                    "balancer": "round_robin",
                    "health": {"enabled": False},
                    "discovery": {
                        "dns": "workers.dli.test:8500",
                        "nameserver": f"127.0.0.1:{dns.port}",
                        "refresh_s": 0.1,
                    },
                }
            ]
        }
    )
    gateway = Gateway(config.routes, PluginHost().load())
    await gateway.start()
    route = gateway.routes["m"]

    async def nodes(expected: list[str]) -> None:
        for _ in range(200):
            live = sorted(a for a, n in route.nodes.items() if not n.draining)
            if live == expected:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"route nodes {sorted(route.nodes)} never became {expected}")

    try:
        await nodes(["127.0.0.1:8500", "127.0.0.2:8500", "127.0.0.3:8500"])
        dns.write("127.0.0.1", "127.0.0.4")  # one node gone, one new
        await nodes(["127.0.0.1:8500", "127.0.0.4:8500"])
        dns.stop()  # the nameserver goes away: the last good list stays
        await asyncio.sleep(1.5)
        await nodes(["127.0.0.1:8500", "127.0.0.4:8500"])
    finally:
        await gateway.stop()


async def test_an_unreachable_nameserver_is_an_error_not_an_empty_list() -> None:
    port = free_udp_port()
    with pytest.raises(DnsError, match="did not answer"):
        await lookup("workers.dli.test", ("127.0.0.1", port), timeout=0.3)
