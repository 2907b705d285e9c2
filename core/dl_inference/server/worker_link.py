"""The private channel between the processes of ``serve --workers N``.

The parent makes a folder that only its user may enter and tells each worker, through
environment variables, that folder, the worker's index and the number of workers. Each
worker answers its siblings on ``<folder>/<index>.sock`` (HTTP over a Unix socket, never
on the network): its own metrics, management changes to apply to itself, and the changes
it has applied (a worker started in place of a dead one replays them). So a
``/metrics`` scrape that reaches any worker shows every worker's figures, and a model
loaded or unloaded through any worker is loaded or unloaded in all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

ENV_FOLDER = "DLI_WORKER_DIR"
ENV_INDEX = "DLI_WORKER_INDEX"
ENV_COUNT = "DLI_WORKER_COUNT"
ENV_PARENT = "DLI_WORKER_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
T = TypeVar("T")
# Below Prometheus's default scrape timeout (10 s): a stuck sibling costs its figures only
# (or, to a worker starting in place of a dead one, its journal of management changes).
FIGURES_TIMEOUT_S = 3.0


@dataclass
class SiblingReply:
    """A sibling's answer: its HTTP status and body, or why it could not be asked."""

    worker: int
    status: int = 0
    body: bytes = b""
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure and self.status == 200


@dataclass
class WorkerLink:
    """This worker's place among its siblings, and the calls between them."""

    folder: Path
    index: int
    count: int
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkerLink | None:
        """The link the parent set up, or None outside ``serve --workers N``."""
        folder = environ.get(ENV_FOLDER)
        if not folder:
            return None
        return cls(Path(folder), int(environ[ENV_INDEX]), int(environ[ENV_COUNT]))

    @staticmethod
    def environment(folder: Path, index: int, count: int) -> dict[str, str]:
        """The variables that tell worker ``index`` of ``count`` where its siblings are."""
        return {
            ENV_FOLDER: str(folder),
            ENV_INDEX: str(index),
            ENV_COUNT: str(count),
            ENV_PARENT: str(os.getpid()),
        }

    @staticmethod
    def follow_parent(environ: Mapping[str, str] = os.environ) -> None:
        """Have the kernel send SIGTERM (a drain) to this worker when its parent dies.

        A parent killed outright (SIGKILL, out of memory) would otherwise leave its workers
        serving on the ports with nobody to stop them. Linux only; elsewhere nothing.
        """
        parent = int(environ.get(ENV_PARENT, "0"))
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if parent and os.getppid() != parent:  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    def socket_of(self, worker: int) -> Path:
        return self.folder / f"{worker}.sock"

    @property
    def siblings(self) -> list[int]:
        return [worker for worker in range(self.count) if worker != self.index]

    async def start(self, routes: list[web.RouteDef]) -> None:
        """Answer ``routes`` to the siblings on this worker's socket."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        path = self.socket_of(self.index)
        path.unlink(missing_ok=True)  # left by a worker of the same index that died
        await web.UnixSite(runner, str(path)).start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def ask_siblings(
        self, method: str, path: str, body: Any = None, *, timeout_s: float
    ) -> list[SiblingReply]:
        """``method path`` (JSON ``body``) to every sibling at once; one reply each."""

        async def ask(worker: int) -> SiblingReply:
            connector = aiohttp.UnixConnector(path=str(self.socket_of(worker)))
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            url = f"http://worker{path}"
            try:
                async with (
                    aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                    session.request(method, url, json=body) as reply,
                ):
                    return SiblingReply(worker, reply.status, await reply.read())
            except TimeoutError:  # before OSError, of which it is a kind
                return SiblingReply(worker, failure=f"no answer within {timeout_s:g} s")
            except (aiohttp.ClientError, OSError) as exc:
                return SiblingReply(worker, failure=str(exc) or type(exc).__name__)

        return list(await asyncio.gather(*(ask(worker) for worker in self.siblings)))

    async def gather(self, path: str, own: T, read: Callable[[bytes], T]) -> dict[int, T | None]:
        """``own`` for this worker and ``read(body)`` of each sibling's ``GET path``.

        A sibling that does not answer within FIGURES_TIMEOUT_S, or whose answer ``read``
        refuses (ValueError), maps to None.
        """
        replies = await self.ask_siblings("GET", path, timeout_s=FIGURES_TIMEOUT_S)
        found: dict[int, T | None] = {self.index: own}
        for reply in replies:
            found[reply.worker] = None
            if reply.ok:
                with contextlib.suppress(ValueError):
                    found[reply.worker] = read(reply.body)
        return found
