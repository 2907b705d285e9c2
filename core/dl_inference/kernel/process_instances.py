"""Model instances in processes of their own (``execution: process`` in a model's config).

By default a model runs in threads of the server process, where its compute competes with
the front end (event loop, protocol decoding) for the interpreter. With ``execution:
process`` each of the version's ``instances`` is a child process, as Triton runs a python
model's instances in stub processes:

- The server keeps the scheduler: the model's :class:`~dl_inference.kernel.batching.Batcher`
  forms the batches as in thread mode and each of its threads hands a batch to one child.
  The merged input arrays are written into a shared-memory region the server owns (one per
  child and direction, reused, grown when a batch needs more); a small message on a socket
  names their offsets; the child runs the model and writes its outputs into the reply
  region the same way. BYTES / object arrays travel pickled in the message. While it waits
  for the reply, the scheduler thread blocks in a system call, leaving the interpreter to
  the event loop.
- A child is started with ``python -m dl_inference.kernel.process_instances`` (a fresh
  interpreter, never a fork, so a framework's threads are safe) and loads the model with the
  same backend plugin, config and settings; ``processor.py`` runs in the child, around the
  model, as in thread mode. Start-up costs an interpreter plus the framework's import
  (a second or two for torch) on top of the load itself.
- Errors keep their class and message: the child maps a framework exception with the
  backend's :meth:`~dl_inference.Backend.client_error` (a client's 400 / INVALID_ARGUMENT),
  else to BackendError naming ``file:line``, exactly as in thread mode.
- A child that dies (a crash, ``os._exit``, the OOM killer) fails its batch with
  Unavailable (503 / UNAVAILABLE) naming the model; the version turns UNAVAILABLE and the
  child is started again after ``RETRY_FIRST_S``, doubling up to ``RETRY_MAX_S`` while it
  keeps dying; the version turns READY when every instance runs again. The other models
  are not touched. Unloading the version ends its children; a child whose server went
  away ends when its socket closes.

Not for what one execution per batch in another process cannot carry: decoupled
(streaming) models, backends taking request lists (Triton's python backend), models whose
``predict`` is ``async`` (ensembles, which call other models of the server): refused at
load, naming the key.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from queue import SimpleQueue
from typing import Any

import numpy as np
import structlog

from dl_inference.kernel import heap
from dl_inference.kernel.streaming import is_generator_function
from dl_inference.spi.backend import Backend
from dl_inference.spi.errors import BackendError, ConfigError, DlInferenceError, Unavailable
from dl_inference.spi.types import InferRequest, TensorSpec

log = structlog.get_logger("dl_inference.models")

KEY = "execution: process"
_ALIGN = 64  # each array starts on a cache line of its region
_FIRST_REGION = 1 << 20
# A child that ran this long since its start is not "still dying": its back-off starts over.
_STABLE_S = 60.0

# (name, dtype, shape, offset) of one numeric array in a region; the rest travel pickled.
Layout = list[tuple[str, str, tuple[int, ...], int]]


class ProcessInstances(Backend):
    """The server's side of a version whose instances run in child processes: stands in for
    the version's backend (same name, config, settings, what it takes and returns), and its
    :meth:`predict` runs a batch in a free child."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.model_name, inner.version, inner.path, inner.config, inner.settings)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # what messages name: the real backend
        self.merges_requests = inner.merges_requests  # type: ignore[misc]
        refused = _refusal(inner)
        if refused:
            raise ConfigError(
                f"model {inner.model_name!r}: {KEY} cannot run {refused}; remove "
                f"`execution: process` from its config (threads serve it)"
            )
        # Told when the instances stop (False, why) and run again (True, ""): the version's
        # state follows (set by the registry).
        self.on_change: Callable[[bool, str], None] | None = None
        self._inputs: list[TensorSpec] | None = None
        self._outputs: list[TensorSpec] | None = None
        self._samples: list[InferRequest] = []
        self._slots: list[_Slot] = []
        self._free: SimpleQueue[_Slot] = SimpleQueue()
        self._closing = False

    @property
    def platform(self) -> str:
        return self.inner.platform

    def load(self) -> None:
        """Start ``instances`` children and wait until each has loaded the model."""
        try:
            for index in range(self.config.instances):
                slot = _Slot(self, index)
                self._slots.append(slot)
                self._inputs, self._outputs, self._samples = slot.start()
                self._free.put(slot)
        except BaseException:
            self.unload()  # the instances that did start end with the failed load
            raise

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        slot = self._free.get()  # as many slots as scheduler threads: never waits long
        try:
            return slot.run(inputs, parameters)
        finally:
            self._free.put(slot)

    def unload(self) -> None:
        """End every child (no orphans) and release the shared memory."""
        self._closing = True
        for slot in self._slots:
            slot.stop()

    def model_inputs(self) -> list[TensorSpec] | None:
        return self._inputs

    def model_outputs(self) -> list[TensorSpec] | None:
        return self._outputs

    def inputs(self) -> list[TensorSpec] | None:
        return self._inputs  # the child's answer already counts processor.py in

    def outputs(self) -> list[TensorSpec] | None:
        return self._outputs

    def warmup_samples(self) -> list[InferRequest]:
        return self._samples

    @property
    def restarting(self) -> bool:
        """Whether an instance died and is being started again (not while unloading)."""
        return not self._closing and any(not slot.alive for slot in self._slots)

    # -- a child died ----------------------------------------------------------------------

    def _died(self, slot: _Slot, reason: str) -> None:
        """From a slot's watcher thread: tell the version, start the child again."""
        if self._closing:
            return
        log.error("model instance process died", model=self.model_name, reason=reason)
        if self.on_change is not None:
            self.on_change(False, f"{reason}; restarting it")
        threading.Thread(
            target=self._restart, args=(slot,), name=f"dli-restart-{self.model_name}", daemon=True
        ).start()

    def _restart(self, slot: _Slot) -> None:
        # Kernel's back-off: the same constants a failed load waits by.
        from dl_inference.kernel.models import RETRY_FIRST_S, RETRY_MAX_S

        if time.monotonic() - slot.started > _STABLE_S:
            slot.attempts = 0
        while not self._closing:
            delay = min(RETRY_FIRST_S * 2**slot.attempts, RETRY_MAX_S)
            slot.attempts += 1
            time.sleep(delay)
            if self._closing:
                return
            try:
                slot.start()
            except Exception as exc:
                log.error(
                    "model instance failed to start again", model=self.model_name, error=str(exc)
                )
                if self.on_change is not None:
                    self.on_change(False, f"its instance process failed to start again: {exc}")
                continue
            if self._closing:
                slot.stop()
                return
            log.info("model instance process started again", model=self.model_name, pid=slot.pid)
            if self.on_change is not None and all(s.alive for s in self._slots):
                self.on_change(True, "")
            return


def _refusal(backend: Backend) -> str:
    """What about ``backend`` one execution per batch in a child cannot carry ("" if nothing)."""
    if backend.takes_request_lists:
        return f"the {backend.name} backend (it takes lists of requests)"
    if inspect.iscoroutinefunction(backend.predict):
        return f"the {backend.name} backend (its async predict calls the server's other models)"
    if backend.decoupled or is_generator_function(backend.predict):
        return "a decoupled (streaming) model"
    return ""


class _Slot:
    """One instance: its child process, socket and the two shared-memory regions."""

    def __init__(self, owner: ProcessInstances, index: int) -> None:
        self.owner = owner
        self.index = index
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.pid = 0
        self.alive = False
        self.attempts = 0
        self.started = 0.0
        self.request: SharedMemory | None = None
        self.reply: SharedMemory | None = None

    def start(self) -> tuple[list[TensorSpec] | None, list[TensorSpec] | None, list[InferRequest]]:
        """Start the child and wait for its load; BackendError with its reason if it fails."""
        inner = self.owner.inner
        ours, theirs = socket.socketpair()
        env = dict(os.environ, DLI_INSTANCE_FD=str(theirs.fileno()))
        process = subprocess.Popen(
            [sys.executable, "-m", "dl_inference.kernel.process_instances"],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()  # the child's end: its death must read as EOF here
        conn = Connection(ours.detach())
        spec = {
            "backend": (type(inner).__module__, type(inner).__qualname__),
            "model": inner.model_name,
            "version": inner.version,
            "path": inner.path,
            "config": inner.config,
            "settings": inner.settings,
            "index": self.index,
        }
        try:
            conn.send(spec)
            answer = conn.recv()
        except (EOFError, OSError):
            answer = ("failed", f"its instance process exited ({_exit_reason(process)})")
        if answer[0] != "ready":
            conn.close()
            _end(process)
            raise BackendError(answer[1])
        _, inputs, outputs, samples = answer
        with self.lock:
            self.process, self.conn, self.pid = process, conn, process.pid
            self.alive, self.started = True, time.monotonic()
        threading.Thread(
            target=self._watch, args=(process,), name=f"dli-watch-{inner.model_name}", daemon=True
        ).start()
        return inputs, outputs, samples

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        with self.lock:
            if process is not self.process or not self.alive:
                return  # stopped on purpose, or already replaced
            self.alive = False
        self.owner._died(self, f"its instance process (pid {process.pid}) {_exit_reason(process)}")

    def run(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        name = self.owner.model_name
        with self.lock:
            conn, process = self.conn, self.process
            if conn is None or process is None or not self.alive:
                raise Unavailable(
                    f"model {name!r}: its instance process is restarting; retry later"
                )
            self.request, layout, inline = _write(self.request, inputs)
            if self.reply is None:
                self.reply = _region(_FIRST_REGION)
            try:
                conn.send(("run", self.request.name, layout, inline, parameters, self.reply.name))
                answer = conn.recv()
            except (EOFError, OSError):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)  # the exit status, for the message
                raise Unavailable(
                    f"model {name!r}: its instance process (pid {process.pid}) "
                    f"{_exit_reason(process)} while running this batch; it is being restarted"
                ) from None
            kind = answer[0]
            if kind == "error":
                raise _error(*answer[1:])
            _, layout, inline, wanted = answer
            outputs = _read(self.reply, layout, inline, copy=True)
            if wanted > self.reply.size:  # did not fit: pickled this time, room for next time
                _release(self.reply)
                self.reply = _region(wanted)
            return outputs

    def stop(self) -> None:
        with self.lock:
            self.alive = False
            conn, process = self.conn, self.process
            self.conn = None
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
                conn.close()
            if process is not None:
                _end(process)
            for region in (self.request, self.reply):
                if region is not None:
                    _release(region)
            self.request = self.reply = None


def _end(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _exit_reason(process: subprocess.Popen[bytes]) -> str:
    code = process.poll()
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _error(module: str, qualname: str, message: str) -> DlInferenceError:
    """The child's error as its own class (a DlInferenceError), else BackendError."""
    try:
        cls = getattr(importlib.import_module(module), qualname)
        if isinstance(cls, type) and issubclass(cls, DlInferenceError):
            return cls(message)
    except Exception:
        pass
    return BackendError(message)


# -- shared memory ---------------------------------------------------------------------------


def _region(size: int) -> SharedMemory:
    return SharedMemory(create=True, size=max(size, _FIRST_REGION))


def _release(region: SharedMemory) -> None:
    region.close()
    with contextlib.suppress(FileNotFoundError):
        region.unlink()


def _attach(name: str, cache: dict[str, SharedMemory]) -> SharedMemory:
    """A region the server made, mapped in the child (kept while the server keeps it)."""
    region = cache.get(name)
    if region is None:
        for old in cache.values():
            old.close()  # the server grew the region: the old one is gone
        cache.clear()
        region = cache[name] = SharedMemory(name=name)
        # Python < 3.13 registers an attached region with this process's resource tracker,
        # which would unlink it when this child dies: the server owns it.
        with contextlib.suppress(Exception):
            resource_tracker.unregister(region._name, "shared_memory")  # type: ignore[attr-defined]
    return region


def _plan(arrays: dict[str, np.ndarray]) -> tuple[Layout, dict[str, np.ndarray], int]:
    """Offsets for the numeric arrays; object arrays go pickled; the bytes needed."""
    layout: Layout = []
    inline: dict[str, np.ndarray] = {}
    offset = 0
    for name, array in arrays.items():
        if array.dtype.hasobject:
            inline[name] = array
            continue
        layout.append((name, array.dtype.str, tuple(array.shape), offset))
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    return layout, inline, offset


def _write(
    region: SharedMemory | None, arrays: dict[str, np.ndarray]
) -> tuple[SharedMemory, Layout, dict[str, np.ndarray]]:
    """Copy ``arrays`` into ``region`` (made or grown when they do not fit)."""
    layout, inline, needed = _plan(arrays)
    if region is None or region.size < needed:
        if region is not None:
            _release(region)
        region = _region(needed * 2)
    _copy_in(region, arrays, layout)
    return region, layout, inline


def _copy_in(region: SharedMemory, arrays: dict[str, np.ndarray], layout: Layout) -> None:
    for name, dtype, shape, offset in layout:
        view = np.ndarray(shape, dtype=dtype, buffer=region.buf, offset=offset)
        np.copyto(view, arrays[name], casting="no")


def _read(
    region: SharedMemory, layout: Layout, inline: dict[str, Any], *, copy: bool
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, offset in layout:
        view = np.ndarray(shape, dtype=dtype, buffer=region.buf, offset=offset)
        out[name] = view.copy() if copy else view
    out.update(inline)
    return out


# -- the child -------------------------------------------------------------------------------


def _child(conn: Connection) -> None:
    """Load the model as the spec says, then run batches until the server says stop (or
    goes away)."""
    from dl_inference.kernel.models import ModelVersion, describe_exception, load_backend

    spec = conn.recv()
    module, qualname = spec["backend"]
    try:
        cls = getattr(importlib.import_module(module), qualname)
        backend = cls(
            spec["model"], spec["version"], spec["path"], spec["config"], spec["settings"]
        )
        model = ModelVersion(spec["model"], spec["version"], cls.name, backend)
        load_backend(model)
        if model.decoupled:
            raise ConfigError(
                f"model {model.name!r}: {KEY} cannot run a decoupled (streaming) model; remove "
                "`execution: process` from its config"
            )
        samples = backend.warmup_samples()
        conn.send(("ready", backend.inputs(), backend.outputs(), samples))
    except Exception as exc:
        log.error("model failed to load in its instance process", model=spec["model"], exc_info=exc)
        conn.send(("failed", describe_exception(exc)))
        return
    regions: dict[str, SharedMemory] = {}
    replies: dict[str, SharedMemory] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if message[0] == "stop":
            return
        _, request, layout, inline, parameters, reply = message
        inputs = _read(_attach(request, regions), layout, inline, copy=False)
        try:
            outputs = model._predict_sync(inputs, parameters)
        except DlInferenceError as exc:
            conn.send(("error", type(exc).__module__, type(exc).__qualname__, str(exc)))
            continue
        except Exception as exc:
            conn.send(("error", "", "", f"model {model.name!r} failed: {exc}"))
            continue
        del inputs
        conn.send(_reply(_attach(reply, replies), outputs))


def _reply(region: SharedMemory, outputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
    """The reply message: outputs in ``region``, or pickled when they do not fit (with the
    size the server should give the region for the next batch)."""
    outputs = {name: np.asarray(value) for name, value in outputs.items()}
    layout, inline, needed = _plan(outputs)
    if needed > region.size:
        return ("ok", [], outputs, needed * 2)
    _copy_in(region, outputs, layout)
    return ("ok", layout, inline, 0)


def main() -> None:
    """A child's entry point (``python -m dl_inference.kernel.process_instances``)."""
    fd = int(os.environ.pop("DLI_INSTANCE_FD"))
    heap.keep_freed_memory()  # the model's batches run here: see dl_inference.kernel.heap
    # The server's Ctrl-C reaches its whole process group: the server ends its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        _child(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
