"""Where a route's node list comes from: static config, a DNS name, or a watched file.

Each source yields the full current list of ``(address, weight)``; the route diffs it
against what it has, so changes apply without a restart and removed nodes drain.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml

from dl_inference.gateway.config import DiscoveryConfig, NodeConfig, join_address, split_address
from dl_inference.gateway.dns import lookup
from dl_inference.spi.errors import ConfigError

log = structlog.get_logger("dl_inference.gateway")

NodeList = list[tuple[str, int]]
Apply = Callable[[NodeList], None]


def resolve(host: str, port: int) -> list[str]:
    """Every A/AAAA address of ``host`` as ``host:port`` strings, sorted (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_address(info[4][0], port) for info in infos})


def parse_node_file(path: Path, default_weight: int = 100) -> NodeList:
    """A node file: YAML list (or ``nodes:`` list) of ``{address, weight}`` or ``host:port``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the node file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the node file is not valid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"nodes"}:
        data = data["nodes"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(
            f"{path}: a node file is a list of {{address: HOST:PORT, weight: N}} entries "
            f"(or of HOST:PORT strings), not {type(data).__name__}"
        )
    nodes: NodeList = []
    for index, item in enumerate(data):
        entry: Any = {"address": item, "weight": default_weight} if isinstance(item, str) else item
        try:
            node = NodeConfig.model_validate(entry)
        except Exception as exc:
            raise ConfigError(f"{path}: entry [{index}] is not a node: {exc}") from None
        nodes.append((node.address, node.weight))
    return nodes


class Discovery:
    """Keeps a route's node list current; ``start`` applies the first list before returning."""

    def __init__(self, model: str, config: DiscoveryConfig, apply: Apply) -> None:
        self.model = model
        self.config = config
        self.apply = apply
        self._task: asyncio.Task[None] | None = None
        self._last: NodeList | None = None
        self._file_stamp: tuple[float, int] | None = None

    async def start(self) -> None:
        try:
            await self.refresh()
        except (OSError, ConfigError) as exc:
            # Start anyway: DNS may not resolve yet while the workers come up.
            log.warning("node discovery failed; will retry", model=self.model, error=str(exc))
        self._task = asyncio.create_task(self._loop(), name=f"discovery:{self.model}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except (OSError, ConfigError) as exc:
                # Keep the last good list: a transient DNS or editing error must not
                # empty the route.
                log.warning(
                    "node discovery failed; keeping the last list", model=self.model, error=str(exc)
                )

    async def refresh(self) -> None:
        nodes = await self._read()
        if nodes is None or nodes == self._last:
            return
        self._last = nodes
        log.info("nodes discovered", model=self.model, nodes=[a for a, _ in nodes])
        self.apply(nodes)

    async def _read(self) -> NodeList | None:
        if self.config.dns is not None:
            host, port = split_address(self.config.dns)
            if self.config.nameserver is not None:
                server = split_address(self.config.nameserver)
                ips = await lookup(host, server)
                addresses = [join_address(ip, port) for ip in ips]
            else:
                addresses = await asyncio.to_thread(resolve, host, port)
            return [(address, self.config.weight) for address in addresses]
        assert self.config.file is not None
        path = self.config.file
        stat = await asyncio.to_thread(path.stat)
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._file_stamp:
            return None
        nodes = await asyncio.to_thread(parse_node_file, path, self.config.weight)
        self._file_stamp = stamp
        return nodes
