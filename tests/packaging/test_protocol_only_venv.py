"""The kernel with only ``dl-inference-tfserving`` and ``dl-inference-seldon``, as a user meets it.

Every distribution of the repository (the kernel, ``plugins/*``, ``examples/*``) is built as
a wheel, and each wheel is read as a zip: its package data and its ``dl_inference`` entry
point must be inside, since an install from an index gets nothing else.

Then the kernel, tfserving and seldon wheels alone go into a fresh venv (no system
site-packages; dependencies from the package index under ``requirements/constraints.txt``).
That venv must hold no torch, TensorFlow or onnxruntime, list both protocols in
``dl-inference plugins``, and serve a ``python``-backend model to real TF Serving clients
(``tensorflow_serving.apis`` over gRPC, REST ``/v1/models/<m>:predict``) and Seldon clients
(``/seldon.protos.Model/Predict``, REST ``/api/v1.0/predictions``), from a worker and through
a gateway both run by that venv's interpreter. The clients run here, in the dev venv.

The kernel ships no balancer, so a gateway also needs ``dl-inference-balancers`` (as the
gateway image installs it): the venv gets that wheel only after the three-wheel checks.

Last, every wheel goes into one more fresh venv, ``--no-deps`` from no index (third-party
dependencies from the dev venv's site-packages): each plugin's entry point loads from its
wheel (``dl-inference plugins``), every package reads its data files where pip put them,
and the kernel serves its demo repository and status page from its wheel.

Wheels build without build isolation where the dev venv has setuptools (it meets every
``build-system.requires``), which keeps the module under a minute; the only skip is an
unreachable package index, read from pip's own report.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_seldon._proto import seldon_pb2 as seldon

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
# Every distribution in the repository, as a folder relative to it ("." is the kernel).
DISTRIBUTIONS = [
    ".",
    *sorted(
        str(path.parent.relative_to(REPO))
        for pattern in ("plugins/*/pyproject.toml", "examples/*/pyproject.toml")
        for path in REPO.glob(pattern)
    ),
]
PROTOCOL_ONLY = (".", "plugins/tfserving", "plugins/seldon")
# Package data that must ship, beyond "every file of the package folder" (which cannot
# notice a file that was never written, such as a missing py.typed marker).
REQUIRED_DATA = {
    ".": (
        "dl_inference/py.typed",
        "dl_inference/_proto/*.pyi",
        "dl_inference/demo/models/*/config.yaml",
        "dl_inference/demo/models/*/1/model.py",
        "dl_inference/server/status_page/*.html",
    ),
    "plugins/tfserving": ("dl_inference_tfserving/py.typed", "dl_inference_tfserving/_proto/*.pyi"),
    "plugins/seldon": ("dl_inference_seldon/py.typed", "dl_inference_seldon/_proto/*.pyi"),
    # Triton python models import the top-level module by this name.
    "plugins/triton": ("dl_inference_triton/py.typed", "triton_python_backend_utils.py"),
    # TorchServe handlers import the top-level ts package.
    "plugins/torchserve": (
        "dl_inference_torchserve/py.typed",
        "dl_inference_torchserve/_proto/*.pyi",
        "ts/context.py",
        "ts/torch_handler/base_handler.py",
        "ts/utils/util.py",
    ),
}
# Frameworks and their kin (torchvision, tensorflow-cpu, onnxruntime-gpu, jaxlib...).
FRAMEWORKS = re.compile(r"^(torch|tensorflow|onnxruntime|tf[-_]keras|keras|jax)")
# What pip prints when it cannot reach an index, the only reason to skip rather than fail:
# connection errors, then a final error about a file it could not get (not a conflict).
UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Name or service not known|Network is unreachable|ConnectTimeoutError|"
    r"ProxyError|Connection refused|Read timed out"
)
NOT_FETCHED = re.compile(
    r"^ERROR: (No matching distribution found|Could not install packages due to an OSError|"
    r"Could not fetch URL)",
    re.MULTILINE,
)
SELDON_PREDICT = "/seldon.protos.Model/Predict"

AFFINE = """
    import numpy as np
    from dl_inference import PythonModel

    class Affine(PythonModel):
        def predict(self, inputs, **parameters):
            x = inputs["x"]
            return {
                "y": x * np.float32(2) + np.float32(1),
                "positives": (x > 0).sum(axis=1).astype(np.int64),
                "sign": np.array([b"pos" if r.sum() > 0 else b"neg" for r in x], dtype=object),
            }
"""
AFFINE_CONFIG = """
    backend: python
    inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
    outputs:
      - {name: y, datatype: FP32, shape: [-1, 3]}
      - {name: positives, datatype: INT64, shape: [-1]}
      - {name: sign, datatype: BYTES, shape: [-1]}
"""
X = np.array([[1.0, 2.0, -0.5], [-3.0, 0.25, -5.5]], dtype=np.float32)
Y = X * 2 + 1
POSITIVES = [2, 1]
SIGNS = ["pos", "neg"]


def normalized(name: str) -> str:
    """A distribution name as wheel file names and import names spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def project_table(dist: str) -> dict[str, Any]:
    with open(REPO / dist / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def package_of(dist: str) -> str:
    """The import package a distribution ships: its name with underscores, by convention."""
    return normalized(project_table(dist)["project"]["name"])


def package_root(dist: str) -> Path:
    """The folder holding the distribution's package (``packages.find.where``, else its own)."""
    packages = project_table(dist).get("tool", {}).get("setuptools", {}).get("packages")
    where = packages["find"].get("where", ["."])[0] if isinstance(packages, dict) else "."
    return REPO / dist / where


# -- wheels ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every distribution's wheel (``pip wheel --no-deps``), by distribution folder.

    Built from a copy without build/, *.egg-info or caches, so that leftovers of earlier
    builds in the checkout cannot slip into a wheel, and the checkout is not written to.
    """
    root = tmp_path_factory.mktemp("wheels")
    source, out = root / "src", root / "dist"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "*.egg-info", "build", "dist", "__pycache__"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    if importlib.util.find_spec("setuptools"):
        # Every build-system.requires is setuptools>=64: the dev venv's saves ~30 s of
        # isolated build environments. Without it, pip builds them as a user's would.
        command.append("--no-build-isolation")
    command += [str(source / dist) for dist in DISTRIBUTIONS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    built: dict[str, Path] = {}
    for dist in DISTRIBUTIONS:
        (built[dist],) = out.glob(f"{package_of(dist)}-*.whl")
    return built


def entry_points(wheel: zipfile.ZipFile) -> configparser.ConfigParser:
    """The wheel's ``entry_points.txt`` (no sections when it has none)."""
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    for name in fnmatch.filter(wheel.namelist(), "*.dist-info/entry_points.txt"):
        parser.read_string(wheel.read(name).decode())
    return parser


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_each_wheel_holds_its_package_data_and_entry_point(
    wheels: dict[str, Path], dist: str
) -> None:
    package, where = package_of(dist), package_root(dist)
    with zipfile.ZipFile(wheels[dist]) as wheel:
        names = set(wheel.namelist())
        points = entry_points(wheel)

    # Every file of the package folder, code and data alike.
    in_source = {
        path.relative_to(where).as_posix()
        for path in (where / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert f"{package}/__init__.py" in in_source, f"no package {package} in {where}"
    missing = sorted(in_source - names)
    assert not missing, f"{wheels[dist].name} lacks {missing}: add them to its package-data"
    for pattern in REQUIRED_DATA.get(dist, ()):
        assert fnmatch.filter(names, pattern), f"{wheels[dist].name} holds no {pattern}"

    if dist == ".":
        assert points["console_scripts"]["dl-inference"] == "dl_inference.cli:main"
        return
    # A plugin is found by its entry point in group dl_inference, pointing into its package.
    assert points.has_section("dl_inference"), (
        f"{wheels[dist].name} has no [project.entry-points.dl_inference]: "
        "dl-inference would never load it"
    )
    (target,) = points["dl_inference"].values()
    module = target.split(":")[0]
    assert module.split(".")[0] == package, target
    assert {f"{module.replace('.', '/')}.py", f"{module.replace('.', '/')}/__init__.py"} & names


# -- a venv with the kernel and the two protocol plugins only ----------------------------------


@dataclass
class Venv:
    """A fresh venv, its environment, and what was true of it with only the three wheels."""

    root: Path
    env: dict[str, str]
    installed: dict[str, str] = field(default_factory=dict)
    plugins_listing: str = ""
    gateway_without_balancer: str = ""

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env,
            cwd=self.root,  # not the checkout: nothing may import from the sources
        )

    def pip_install(self, *wheels: Path) -> None:
        result = self.run(
            *(self.python, "-m", "pip", "install", "--retries", "2", "--timeout", "30"),
            *("-c", CONSTRAINTS, *wheels),
            timeout=600,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            unreachable = UNREACHABLE.search(output)
            if unreachable and NOT_FETCHED.search(output):
                last = output.strip().splitlines()[-1]
                pytest.skip(f"package index unreachable ({unreachable.group(0)}): {last}")
            pytest.fail(f"pip install failed:\n{output}")


@pytest.fixture(scope="module")
def venv(wheels: dict[str, Path]) -> Iterator[Venv]:
    with tempfile.TemporaryDirectory(prefix="dli-protocol-venv-") as folder:
        root = Path(folder) / "venv"
        command = [sys.executable, "-m", "venv", str(root)]
        created = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert created.returncode == 0, created.stderr
        env = {
            **os.environ,
            "VIRTUAL_ENV": str(root),
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            # Empty is unset for Python: nothing from the dev environment leaks in.
            "PYTHONPATH": "",
            "PYTHONHOME": "",
        }
        made = Venv(root, env)
        made.pip_install(*(wheels[dist] for dist in PROTOCOL_ONLY))
        listed = made.run(made.python, "-m", "pip", "list", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        made.installed = {row["name"]: row["version"] for row in json.loads(listed.stdout)}
        plugins = made.run(root / "bin" / "dl-inference", "plugins")
        assert plugins.returncode == 0, plugins.stdout + plugins.stderr
        made.plugins_listing = plugins.stdout
        made.gateway_without_balancer = gateway_refusal(made)
        yield made


def gateway_refusal(venv: Venv) -> str:
    """What ``serve`` says for a config with routes when no plugin provides a balancer."""
    config = venv.root.parent / "gateway-no-balancer.yaml"
    config.write_text(json.dumps({"routes": [{"model": "m", "nodes": [{"address": "x:1"}]}]}))
    serve = ["-m", "dl_inference", "serve", "-c", config, "--host", "127.0.0.1"]
    try:
        result = venv.run(venv.python, *serve, "--grpc-port", "0", "--http-port", "0", timeout=60)
    except subprocess.TimeoutExpired:
        return "the gateway started"
    return f"exit {result.returncode}: {result.stdout}{result.stderr}"


def test_the_venv_holds_only_the_three_and_no_framework(venv: Venv) -> None:
    ours = sorted(name for name in venv.installed if normalized(name).startswith("dl_inference"))
    assert ours == ["dl-inference", "dl-inference-seldon", "dl-inference-tfserving"]
    frameworks = sorted(name for name in venv.installed if FRAMEWORKS.match(name.lower()))
    assert not frameworks, f"installed with the protocol plugins: {frameworks}"


def test_the_venv_imports_the_wheels_not_the_checkout(venv: Venv) -> None:
    code = textwrap.dedent(
        """
        import importlib.util, json
        import dl_inference, dl_inference_seldon, dl_inference_tfserving
        mods = (dl_inference, dl_inference_seldon, dl_inference_tfserving)
        print(json.dumps({
            "files": [m.__file__ for m in mods],
            "found": [n for n in ("torch", "tensorflow", "onnxruntime")
                      if importlib.util.find_spec(n)],
        }))
        """
    )
    result = venv.run(venv.python, "-c", code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    site = str(venv.root / "lib")
    assert all(path.startswith(site) for path in report["files"]), report["files"]
    assert report["found"] == []


def test_plugins_lists_both_protocols_as_loaded(venv: Venv) -> None:
    lines = venv.plugins_listing.splitlines()
    for plugin in ("tfserving", "seldon"):
        distribution = f"dl-inference-{plugin}"
        rows = [n for n, line in enumerate(lines) if line.split()[:1] == [plugin]]
        assert rows, f"{plugin} missing from `dl-inference plugins`:\n{venv.plugins_listing}"
        row = rows[0]
        assert distribution in lines[row] and "[loaded]" in lines[row], lines[row]
        assert lines[row + 1].split() == ["protocols:", plugin], lines[row + 1]


def test_a_gateway_without_a_balancer_plugin_names_the_package(venv: Venv) -> None:
    refusal = venv.gateway_without_balancer
    assert refusal.startswith("exit ") and not refusal.startswith("exit 0"), refusal
    assert "pip install dl-inference-balancers" in refusal, refusal


# -- a worker and a gateway from that venv, real clients from here ----------------------------


@dataclass
class Endpoint:
    grpc_address: str
    http_url: str


@pytest.fixture(scope="module")
def worker(venv: Venv) -> Iterator[ServerProcess]:
    """``dl-inference serve`` with the three wheels only, serving ``affine``."""
    repo = venv.root.parent / "models"
    write_python_model(repo, "affine", AFFINE, AFFINE_CONFIG)
    serve = ServerProcess(
        ["--model-repository", str(repo)], python=venv.python, env=venv.env, cwd=venv.root
    )
    with serve as server:
        yield server


@pytest.fixture(scope="module")
def gateway(venv: Venv, wheels: dict[str, Path], worker: ServerProcess) -> Iterator[ServerProcess]:
    """A gateway (no models of its own) routing ``affine`` to ``worker``, gRPC and REST."""
    venv.pip_install(wheels["plugins/balancers"])
    config = venv.root.parent / "gateway.yaml"
    node = {"address": worker.grpc_address, "http_address": worker.http_address}
    config.write_text(json.dumps({"routes": [{"model": "affine", "nodes": [node]}]}))
    with ServerProcess(["-c", str(config)], python=venv.python, env=venv.env, cwd=venv.root) as gw:
        yield gw


@pytest.fixture(scope="module", params=["worker", "gateway"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    server: ServerProcess = request.getfixturevalue(request.param)
    return Endpoint(server.grpc_address, server.http_url)


def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url}: HTTP {error.code} {error.read()!r}") from None


def test_tfserving_grpc_predict(endpoint: Endpoint) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "affine"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    with grpc.insecure_channel(endpoint.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(request, timeout=60)
    assert reply.model_spec.name == "affine"
    outputs = {name: tf.make_ndarray(proto) for name, proto in reply.outputs.items()}
    assert outputs["y"].dtype == np.float32 and outputs["y"].shape == (2, 3)
    np.testing.assert_allclose(outputs["y"], Y)
    assert outputs["positives"].dtype == np.int64 and outputs["positives"].tolist() == POSITIVES
    assert reply.outputs["sign"].dtype == tf.string.as_datatype_enum
    assert outputs["sign"].tolist() == [s.encode() for s in SIGNS]


def test_tfserving_rest_predict(endpoint: Endpoint) -> None:
    url = f"{endpoint.http_url}/v1/models/affine:predict"
    columns = post_json(url, {"inputs": {"x": X.tolist()}})["outputs"]
    np.testing.assert_allclose(columns["y"], Y)
    assert all(isinstance(v, float) for row in columns["y"] for v in row)
    assert columns["positives"] == POSITIVES
    assert all(type(v) is int for v in columns["positives"])
    assert columns["sign"] == SIGNS

    rows = post_json(url, {"instances": X.tolist()})["predictions"]
    assert [row["positives"] for row in rows] == POSITIVES
    np.testing.assert_allclose([row["y"] for row in rows], Y)


def seldon_call(endpoint: Endpoint, message: seldon.SeldonMessage) -> seldon.SeldonMessage:
    with grpc.insecure_channel(endpoint.grpc_address) as channel:
        stub = channel.unary_unary(
            SELDON_PREDICT,
            request_serializer=seldon.SeldonMessage.SerializeToString,
            response_deserializer=seldon.SeldonMessage.FromString,
        )
        return stub(message, timeout=60)


def seldon_tftensor(output: str | None = None) -> seldon.SeldonMessage:
    message = seldon.SeldonMessage()
    message.meta.tags["model"].string_value = "affine"
    if output:
        message.meta.tags["output"].string_value = output
    tensor = message.data.tftensor
    tensor.dtype = seldon.DT_FLOAT
    tensor.tensor_shape.dim.extend(seldon.TensorShapeProto.Dim(size=d) for d in X.shape)
    tensor.tensor_content = X.astype("<f4").tobytes()
    return message


def test_seldon_grpc_predict(endpoint: Endpoint) -> None:
    y = seldon_call(endpoint, seldon_tftensor()).data.tftensor
    assert y.dtype == seldon.DT_FLOAT and [d.size for d in y.tensor_shape.dim] == [2, 3]
    np.testing.assert_allclose(np.frombuffer(y.tensor_content, "<f4").reshape(2, 3), Y)

    counts = seldon_call(endpoint, seldon_tftensor(output="positives")).data.tftensor
    assert counts.dtype == seldon.DT_INT64 and [d.size for d in counts.tensor_shape.dim] == [2]
    assert np.frombuffer(counts.tensor_content, "<i8").tolist() == POSITIVES

    plain = seldon.SeldonMessage()
    plain.meta.tags["model"].string_value = "affine"
    plain.data.tensor.shape.extend(X.shape)
    plain.data.tensor.values.extend(X.ravel().tolist())
    reply = seldon_call(endpoint, plain).data.tensor
    assert list(reply.shape) == [2, 3]
    np.testing.assert_allclose(np.array(reply.values).reshape(2, 3), Y)


def test_seldon_rest_predictions(endpoint: Endpoint) -> None:
    url = f"{endpoint.http_url}/api/v1.0/predictions"
    body = {"meta": {"tags": {"model": "affine"}}, "data": {"ndarray": X.tolist()}}
    reply = post_json(url, body)
    assert np.array(reply["data"]["ndarray"]).shape == (2, 3)
    np.testing.assert_allclose(reply["data"]["ndarray"], Y)

    by_header = {"meta": {"tags": {"output": "sign"}}, "data": {"ndarray": X.tolist()}}
    reply = post_json(url, by_header, {"Seldon-Model": "affine"})
    assert reply["data"]["ndarray"] == SIGNS


# -- every wheel at once, without a package index ---------------------------------------------


@pytest.fixture(scope="module")
def every_wheel(wheels: dict[str, Path]) -> Iterator[Venv]:
    """A fresh venv holding every wheel of the repository, installed ``--no-deps``.

    Their third-party dependencies (torch, TensorFlow, grpcio...) come from the dev venv's
    site-packages, named by a ``.pth`` line after the venv's own: a folder named that way is
    only added to ``sys.path`` (the ``.pth`` files inside it, which activate the dev venv's
    editable installs, are not read), and the venv's own dist-info comes first, so each
    ``dl-inference*`` distribution and its entry points are the wheel's. No index is asked.
    """
    with tempfile.TemporaryDirectory(prefix="dli-every-wheel-") as folder:
        root = Path(folder) / "venv"
        created = subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        env = {
            **os.environ,
            "VIRTUAL_ENV": str(root),
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": "",
            "PYTHONHOME": "",
        }
        made = Venv(root, env)
        install = [sys.executable, "-m", "pip", "--python", made.python, "install", "-q"]
        result = made.run(*install, "--no-deps", "--no-index", *wheels.values(), timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        (own_site,) = root.glob("lib/python*/site-packages")
        dev_site = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        (own_site / "zz_dev_venv_dependencies.pth").write_text("\n".join(dev_site) + "\n")
        yield made


def test_every_wheel_loads_its_entry_points_from_the_venv(
    every_wheel: Venv, wheels: dict[str, Path]
) -> None:
    expected: dict[str, str] = {}  # entry-point name -> distribution
    for dist, wheel_path in wheels.items():
        with zipfile.ZipFile(wheel_path) as wheel:
            points = entry_points(wheel)
        if points.has_section("dl_inference"):
            name = project_table(dist)["project"]["name"]
            expected.update(dict.fromkeys(points["dl_inference"], name))
    assert len(expected) == len(DISTRIBUTIONS) - 1, expected  # one per plugin distribution
    # The tracing plugin registers its hooks only where an OTLP endpoint is configured (no
    # cost on the hot path otherwise); listing plugins exports nothing.
    traced = Venv(
        every_wheel.root,
        {**every_wheel.env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"},
    )
    listed = traced.run(every_wheel.root / "bin" / "dl-inference", "plugins", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    plugins = {row["name"]: row for row in json.loads(listed.stdout)}
    for name, dist in expected.items():
        assert name in plugins, f"{dist}'s entry point {name} not listed: {sorted(plugins)}"
        row = plugins[name]
        assert (row["distribution"], row["status"]) == (dist, "loaded"), row
        assert row["registers"] or row["hooks"], f"{name} registers nothing: {row}"

    # Each package is imported from the venv (its wheel), not from the checkout.
    packages = [package_of(dist) for dist in DISTRIBUTIONS]
    code = "import importlib, json, sys; print(json.dumps([importlib.import_module(p).__file__ "
    code += "for p in sys.argv[1:]]))"
    imported = every_wheel.run(every_wheel.python, "-c", code, *packages)
    assert imported.returncode == 0, imported.stderr
    for path in json.loads(imported.stdout):
        assert path.startswith(str(every_wheel.root)), path


def test_every_wheel_reads_its_package_data_from_the_venv(every_wheel: Venv) -> None:
    """Each package's data files, read with importlib.resources where they were installed;
    then the kernel serves its demo repository and its status page from them."""
    code = textwrap.dedent(
        """
        import importlib.resources, json, sys
        found = {}
        for package in sys.argv[1:]:
            stack, count = [importlib.resources.files(package)], 0
            while stack:
                for item in stack.pop().iterdir():
                    if item.is_dir():
                        stack.append(item)
                    elif item.suffix not in (".py", ".pyc"):
                        item.read_bytes()
                        count += 1
            found[package] = count
        print(json.dumps(found))
        """
    )
    packages = {package_of(dist): dist for dist in DISTRIBUTIONS}
    result = every_wheel.run(every_wheel.python, "-c", code, *packages)
    assert result.returncode == 0, result.stderr
    for package, count in json.loads(result.stdout).items():
        where = package_root(packages[package]) / package
        in_source = [
            p
            for p in where.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
        ]
        assert count == len(in_source), f"{package}: {count} data files read, {len(in_source)}"

    server = ServerProcess([], python=every_wheel.python, env=every_wheel.env, cwd=every_wheel.root)
    with server:  # no repository named: the demo, from the kernel wheel's package data
        for model in ("simple", "text_upper"):
            with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/ready") as reply:
                assert reply.status == 200
        with urllib.request.urlopen(f"{server.http_url}/") as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()
