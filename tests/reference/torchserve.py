"""A real TorchServe 0.12 for side-by-side tests, installed by
``scripts/install_reference_servers.sh`` in a venv of its own
(``$DLI_REFERENCE_DIR/torchserve``, default ``<repo>/.reference/torchserve``); it is a Java
server, so a Java runtime must be on PATH.

:func:`archive` makes a ``.mar`` with that venv's own ``torch-model-archiver``;
:class:`TorchServeServer` runs ``torchserve`` on free ports of 127.0.0.1 serving a model
store (``load_models=all``), or with a user's own ``config.properties``, and waits until
every archive has a ready worker.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from dl_inference.testing import free_port

from .triton import reference_venv, stop_process_group


def torchserve_home() -> Path | str:
    """The venv, or the reason TorchServe cannot run here."""
    venv = reference_venv("torchserve")
    for tool in ("torchserve", "torch-model-archiver"):
        if not (venv / "bin" / tool).is_file():
            return f"{venv}/bin/{tool} is missing (scripts/install_reference_servers.sh)"
    if shutil.which("java") is None:
        return "TorchServe needs a Java runtime and none is on PATH (install_system_deps.sh)"
    return venv


def skip_without_torchvision() -> Path:
    """The venv; skips the calling test when its TorchServe cannot run the default image
    handlers (they import torchvision and captum: a venv made by an older install script
    has neither)."""
    venv = skip_without_torchserve()
    for package in ("torchvision", "captum"):
        if not list(venv.glob(f"lib/python3.*/site-packages/{package}/__init__.py")):
            pytest.skip(
                f"the TorchServe reference server in {venv} has no {package} for its image "
                "handlers: run scripts/install_reference_servers.sh again"
            )
    return venv


def skip_without_torchserve() -> Path:
    """The venv; skips the calling test or fixture, saying why, when TorchServe cannot run."""
    found = torchserve_home()
    if isinstance(found, str):
        pytest.skip(f"the TorchServe reference server cannot run here: {found}")
    return found


def archive(
    store: Path,
    name: str,
    handler: Path | str,
    *,
    version: str = "1.0",
    serialized_file: Path | None = None,
    model_file: Path | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """``torch-model-archiver`` writing ``<store>/<name>.mar``; returns its path. ``handler``
    is a handler file or the name of a default handler (``image_classifier``)."""
    venv = skip_without_torchserve()
    command = [
        str(venv / "bin" / "torch-model-archiver"),
        "--model-name",
        name,
        "--version",
        version,
        "--handler",
        str(handler),
        "--export-path",
        str(store),
        "--force",
    ]
    if serialized_file is not None:
        command += ["--serialized-file", str(serialized_file)]
    if model_file is not None:
        command += ["--model-file", str(model_file)]
    if extra_files:
        command += ["--extra-files", ",".join(str(p) for p in extra_files)]
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    return store / f"{name}.mar"


class TorchServeServer:
    """``torchserve --foreground`` serving every archive of ``store``; ``http_url`` is its
    inference listener once started. Leaving the ``with`` block ends its process group.

    ``config_properties``: a user's own file, used as it is (it must name 127.0.0.1
    addresses and the gRPC ports: the helper reads its ports from it) instead of the one the
    helper writes.
    """

    def __init__(
        self,
        store: Path,
        work: Path,
        timeout: float = 180.0,
        *,
        config_properties: Path | None = None,
    ) -> None:
        self.venv = skip_without_torchserve()
        self.store = store
        self.work = work
        self.timeout = timeout
        self.config_properties = config_properties
        if config_properties is None:
            keys = ("inference", "management", "metrics", "grpc", "grpcm")
            self.ports = {key: free_port() for key in keys}
        else:
            self.ports = _ports_of(config_properties)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    def output(self) -> str:
        log = self.work / "torchserve.out"
        return log.read_text(errors="replace") if log.exists() else ""

    def _write_config(self) -> Path:
        properties = {
            "inference_address": self.http_url,
            "management_address": self.management_url,
            "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_inference_port": self.ports["grpc"],
            "grpc_management_address": "127.0.0.1",
            "grpc_management_port": self.ports["grpcm"],
            "disable_system_metrics": "true",
            "model_store": self.store,
            "load_models": "all",
        }
        config = self.work / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        return config

    def start(self) -> TorchServeServer:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "tmp").mkdir(exist_ok=True)
        config = self.config_properties or self._write_config()
        env = {
            **os.environ,
            "PATH": f"{self.venv}/bin:{os.environ.get('PATH', '')}",
            "TMPDIR": str(self.work / "tmp"),  # its pid file and unpacked models
            "LOG_LOCATION": str(self.work / "logs"),
            "METRICS_LOCATION": str(self.work / "logs"),
        }
        command = [
            str(self.venv / "bin" / "torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(config),
            "--model-store",
            str(self.store),
            "--disable-token-auth",
            "--enable-model-api",
        ]
        with (self.work / "torchserve.out").open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        expected = len(list(self.store.glob("*.mar")))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"torchserve exited with {self.process.returncode}:\n{self.output()}"
                )
            if self._ready() >= expected:
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"torchserve not ready in {self.timeout} s:\n{self.output()}")

    def _get(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.management_url}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def _ready(self) -> int:
        """How many registered model versions (archives) have a READY worker."""
        try:
            listing = self._get("/models")
            ready = 0
            for model in listing["models"]:  # type: ignore[index]
                for version in self._get(f"/models/{model['modelName']}/all"):  # type: ignore[union-attr]
                    if any(w.get("status") == "READY" for w in version.get("workers", [])):
                        ready += 1
            return ready
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
            return 0

    def stop(self, timeout: float = 30.0) -> None:
        """Stop TorchServe's process group (the Java frontend and its Python workers)."""
        stop_process_group(self.process, timeout)

    def __enter__(self) -> TorchServeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ports_of(config_properties: Path) -> dict[str, int]:
    """The listeners' ports a config.properties names (``http://127.0.0.1:PORT`` addresses,
    ``grpc_*_port`` numbers)."""
    values = {}
    for line in config_properties.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return {
        "inference": int(values["inference_address"].rsplit(":", 1)[1]),
        "management": int(values["management_address"].rsplit(":", 1)[1]),
        "metrics": int(values["metrics_address"].rsplit(":", 1)[1]),
        "grpc": int(values["grpc_inference_port"]),
        "grpcm": int(values["grpc_management_port"]),
    }


def call(
    url: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    method: str = "POST",
    timeout: float = 60.0,
) -> tuple[int, bytes, str | None]:
    """``(status, body, content type)`` of one HTTP request to ``url + path``; an error
    status is an answer too (a side-by-side test compares both servers' refusals)."""
    request = urllib.request.Request(url + path, data=body or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read(), reply.headers.get("Content-Type")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type")


def wait_answered(
    url: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    log: Callable[[], str] | None = None,
) -> None:
    """Until ``call`` of this request answers 200, for up to 120 s: a server answers its
    ping before it has loaded (unpacked) every archive. The failure shows ``log()``."""
    deadline = time.monotonic() + 120
    while call(url, path, body, headers or {}, method)[0] != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {url}{path} never answered 200\n{log() if log else ''}")
        time.sleep(0.25)


def grpc_stubs(folder: Path) -> tuple[ModuleType, ModuleType]:
    """``(messages, services)``: TorchServe's own gRPC client modules, compiled by
    ``grpc_tools`` into ``folder`` from the ``inference.proto`` its server jar ships
    (``org.pytorch.serve.grpc.inference``), as a TorchServe user makes them. The file is
    compiled as ``torchserve_inference.proto``: the name its modules and descriptors take."""
    return _jar_stubs(folder, "inference")


def grpc_management_stubs(folder: Path) -> tuple[ModuleType, ModuleType]:
    """``(messages, services)`` of TorchServe's gRPC management API, compiled as
    :func:`grpc_stubs` from the ``management.proto`` its server jar ships (as
    ``torchserve_management.proto``)."""
    return _jar_stubs(folder, "management")


def _jar_stubs(folder: Path, api: str) -> tuple[ModuleType, ModuleType]:
    """Compile ``<api>.proto`` of TorchServe's server jar into ``folder``, once a process."""
    venv = skip_without_torchserve()
    name = f"torchserve_{api}_pb2"
    if name not in sys.modules:
        compile_jar_proto(venv, api, folder, f"torchserve_{api}")
        sys.path.insert(0, str(folder))
        try:
            importlib.import_module(name)
            importlib.import_module(f"{name}_grpc")
        finally:
            sys.path.remove(str(folder))
    return sys.modules[name], sys.modules[f"{name}_grpc"]


def compile_jar_proto(venv: Path, api: str, folder: Path, stem: str) -> None:
    """``<stem>_pb2`` / ``<stem>_pb2_grpc`` in ``folder``: TorchServe's client modules,
    compiled by ``grpc_tools`` from the ``<api>.proto`` (and the ``google/rpc/status.proto``
    it imports) its server jar in ``venv`` ships, as a TorchServe user makes them."""
    from grpc_tools import protoc

    jars = sorted(venv.glob("lib/python3.*/site-packages/ts/frontend/model-server.jar"))
    if not jars:
        pytest.skip(f"no TorchServe server jar in {venv} to take its {api}.proto from")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jars[-1]) as jar:
        (folder / f"{stem}.proto").write_bytes(jar.read(f"{api}.proto"))
        # inference.proto imports it; grpc_tools' own includes lack google/rpc.
        jar.extract("google/rpc/status.proto", folder)
    includes = Path(protoc.__file__).parent / "_proto"
    # In a process of its own: grpc_tools' compiler run inside the test process once
    # crashed it (a segfault that ended the whole run).
    compiled = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{folder}",
            f"-I{includes}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(folder / f"{stem}.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, (
        f"grpc_tools could not compile TorchServe's {api}.proto: {compiled.stderr}"
    )
