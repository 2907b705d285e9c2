"""Where a route's node list comes from: static config, a DNS name, or a watched file.

Each source yields the full current list of ``(address, weight)``; the route diffs it
against what it has, so changes apply without a restart and removed nodes drain.

The seed's ``nodefile.txt`` names whole routes (a task's nodes and timeout per line), so
it is read here (:func:`parse_seed_node_file`) and watched (:class:`NodeFileWatch`), and
the gateway turns each good version of it into routes.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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

_NUMBER = re.compile(r"[0-9]+")
_NODEFILE_FORMAT = "taskid=timeout_ms,ip:port,ip:port,... (e.g. 69=100,10.0.0.5:8500)"


def resolve(host: str, port: int) -> list[str]:
    """Every A/AAAA address of ``host`` as ``host:port`` strings, sorted (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_address(info[4][0], port) for info in infos})


def file_stamp(path: Path) -> tuple[int, int, int]:
    """What tells a watched file changed: modification time, size and inode (editors and
    Kubernetes ConfigMap updates replace a file by renaming another over it)."""
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Stop a background loop and wait for it to end."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
        self._file_stamp: tuple[int, int, int] | None = None

    async def start(self) -> None:
        try:
            await self.refresh()
        except (OSError, ConfigError) as exc:
            # Start anyway: DNS may not resolve yet while the workers come up.
            log.warning("node discovery failed; will retry", model=self.model, error=str(exc))
        self._task = asyncio.create_task(self._loop(), name=f"discovery:{self.model}")

    async def stop(self) -> None:
        await cancel_task(self._task)
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
        stamp = await asyncio.to_thread(file_stamp, path)
        if stamp == self._file_stamp:
            return None
        nodes = await asyncio.to_thread(parse_node_file, path, self.config.weight)
        self._file_stamp = stamp
        return nodes


@dataclass(frozen=True)
class SeedTask:
    """One line of a seed node file: a task's call timeout and its nodes, in file order."""

    task_id: int
    timeout_ms: int
    nodes: tuple[str, ...]
    line: int


SeedTasks = dict[int, SeedTask]
"""A parsed seed node file: its tasks by task id."""


def parse_seed_node_text(text: str, source: str) -> SeedTasks:
    """The tasks of a seed ``nodefile.txt`` (``taskid=timeout_ms,ip:port,...`` per line).

    As the seed reads it: lines starting with ``#`` and blank lines say nothing; nodes
    carry no weight; an empty field (a trailing comma) is skipped. Unlike the seed, which
    skipped what it could not read, silently or with a log line, a line that means nothing
    it can use (no ``=``, two ``=``, a task id or timeout that is not a positive whole
    number, a node that is not ``host:port``, a node or task given twice) is a ConfigError
    naming ``source`` and the line, so a bad edit is refused whole.
    """
    tasks: SeedTasks = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        task_text, sep, rest = line.partition("=")
        if not sep or "=" in rest:
            raise ConfigError(f"{where}: {line!r} is not {_NODEFILE_FORMAT}")
        task_text = task_text.strip()
        if not _NUMBER.fullmatch(task_text) or int(task_text) == 0:
            raise ConfigError(f"{where}: task id {task_text!r} is not a positive whole number")
        task_id = int(task_text)
        if task_id in tasks:
            raise ConfigError(
                f"{where}: task {task_id} is already on line {tasks[task_id].line}; "
                "give each task one line"
            )
        timeout_text, *fields = (field.strip() for field in rest.split(","))
        if not _NUMBER.fullmatch(timeout_text) or int(timeout_text) == 0:
            raise ConfigError(
                f"{where}: timeout {timeout_text!r} is not a positive whole number of "
                f"milliseconds; write {_NODEFILE_FORMAT}"
            )
        nodes: list[str] = []
        for field in fields:
            if not field:
                continue
            try:
                split_address(field)
            except ValueError as exc:
                raise ConfigError(f"{where}: node {exc}") from None
            if field in nodes:
                raise ConfigError(f"{where}: node {field} is listed twice")
            nodes.append(field)
        tasks[task_id] = SeedTask(task_id, int(timeout_text), tuple(nodes), number)
    return tasks


def parse_seed_node_file(path: Path) -> SeedTasks:
    """:func:`parse_seed_node_text` of the file at ``path`` (UTF-8, with or without BOM)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the nodefile ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the nodefile is not UTF-8 text ({exc.reason})") from None
    return parse_seed_node_text(text, str(path))


NodeFileChanged = Callable[[Path, SeedTasks], Awaitable[None]]


class NodeFileWatch:
    """Checks a seed node file every ``refresh_s`` and hands each new good version on.

    ``changed(path, tasks)`` gets a version that differs from the last one it took. A
    file that cannot be read or parsed, or that ``changed`` refuses (ConfigError), is
    logged once per edit and the last good version stays in force, as with the
    other discovery sources.
    """

    def __init__(
        self, path: Path, refresh_s: float, last: SeedTasks, changed: NodeFileChanged
    ) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self.last = last
        self.changed = changed
        self._stamp: tuple[int, int, int] | None = None
        self._failed: str | None = None  # the error last logged, so each is logged once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"nodefile:{self.path}")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.check()
            except Exception:
                # A bug in applying one version must not stop the watch for good.
                log.exception(
                    "nodefile check crashed; keeping the last good one", path=str(self.path)
                )

    async def check(self) -> None:
        """Read the file if it changed since the last check; hand it on if it parses."""
        try:
            stamp = await asyncio.to_thread(file_stamp, self.path)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            tasks = await asyncio.to_thread(parse_seed_node_file, self.path)
            if tasks != self.last:
                await self.changed(self.path, tasks)
                self.last = tasks
        except OSError as exc:
            self._stamp = None
            self._refuse(f"{self.path}: cannot read the nodefile ({exc.strerror})")
        except ConfigError as exc:
            self._refuse(str(exc))
        else:
            self._failed = None

    def _refuse(self, error: str) -> None:
        if error != self._failed:
            log.warning("nodefile not applied; keeping the last good one", error=error)
        self._failed = error
