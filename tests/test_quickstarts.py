"""docs/quickstart.md, run as written: one served model per framework, called as the page shows.

For each section (PyTorch, TensorFlow, ONNX, python) the files the page shows are written
into a temporary folder standing for the checkout's root, its make-model command runs there
with this venv's python, its ``dl-inference serve`` command serves the result (on free ports
of 127.0.0.1: only the address changes), and its ``curl`` and ``tritonclient`` blocks must
give the answers computed here, which must also be the answers the page shows. The install
commands are checked, not run: the paths exist, the constraints file is named, the plugins
of ours each needs come along, torch is pinned first. A section whose framework is not
installed here is skipped, saying which.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dl_inference.kernel.plugins import install_hint
from dl_inference.testing import ServerProcess
from dl_inference.testing.markdown import (
    CodeBlock,
    broken_links,
    code_blocks,
    heading_anchor,
    sections,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quickstart.md"
TEXT = DOC.read_text()
SECTIONS = sections(TEXT)
CONSTRAINTS = "requirements/constraints.txt"
INSTALL_PREFIX = f".venv/bin/pip install -c {CONSTRAINTS} "

# The model every section builds: y = x @ W + b, called with the rows X.
W = np.array([[1, 1], [1, -1], [1, 1], [1, -1]], np.float32)
B = np.array([0.5, -0.5], np.float32)
X = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
EXPECTED = X @ W + B


@dataclass(frozen=True)
class Framework:
    """A section of the page: its models, the plugin folder that serves them, what it imports."""

    models: tuple[str, ...]
    plugin: str | None  # the plugins/<folder> the section installs (None: the kernel's own)
    imports: tuple[str, ...]  # modules the make-model script and the backend need


FRAMEWORKS = {
    # TorchScript + config.yaml, and TorchServe's eager mode (state_dict + model.py)
    "PyTorch": Framework(
        ("torch_linear", "torch_eager"), "pytorch", ("torch", "dl_inference_pytorch")
    ),
    "TensorFlow": Framework(
        ("tf_linear",), "tensorflow", ("tensorflow", "dl_inference_tensorflow")
    ),
    "ONNX": Framework(("onnx_linear",), "onnx", ("onnx", "onnxruntime", "dl_inference_onnx")),
    "python": Framework(("py_linear",), None, ()),
}
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|yaml))$")


def blocks_of(section: str) -> list[CodeBlock]:
    return code_blocks(SECTIONS[section])


def shown_answer(code: str) -> str:
    """The answer a block shows in its trailing ``#`` comment lines, joined."""
    return "".join(line.lstrip("# ") for line in code.splitlines() if line.startswith("#"))


def install_lines(text: str) -> list[str]:
    return [
        line
        for block in code_blocks(text)
        if block.lang == "sh"
        for line in block.code.splitlines()
        if "pip install" in line
    ]


def pinned_torch() -> str:
    (pin,) = [
        line.strip()
        for line in (REPO / CONSTRAINTS).read_text().splitlines()
        if line.startswith("torch==")
    ]
    return pin


@pytest.mark.parametrize("section", FRAMEWORKS)
def test_the_install_commands_work_from_a_checkout(section: str) -> None:
    """The plugin folders are the ones the server's own install hints name (the plugins of
    ours it needs first), with the constraints file; torch is pinned before, alone."""
    framework = FRAMEWORKS[section]
    lines = install_lines(SECTIONS[section])
    if framework.plugin is None:
        assert lines == [], "the python backend is the kernel's: nothing to install"
        return
    hint = install_hint(f"dl-inference-{framework.plugin}")
    folders = hint.removeprefix("pip install ").split(" from the root")[0]
    assert all((REPO / folder / "pyproject.toml").is_file() for folder in folders.split())
    expected = [f"{INSTALL_PREFIX}{folders}"]
    if section == "PyTorch":
        expected.insert(0, f"{INSTALL_PREFIX}{pinned_torch()}")
    assert lines == expected


def test_the_kernel_and_client_install_lines() -> None:
    lines = install_lines(SECTIONS["Before you start"])
    assert lines == [
        f"python3 -m venv .venv && {INSTALL_PREFIX}.",
        f"{INSTALL_PREFIX}'tritonclient[http]'",
    ]
    constraints = (REPO / CONSTRAINTS).read_text()
    assert re.search(r"^tritonclient==", constraints, re.MULTILINE)
    # make setup-kernel, which the page names, exists.
    assert re.search(r"^setup-kernel:", (REPO / "Makefile").read_text(), re.MULTILINE)


def assert_links_resolve(text: str, page: Path) -> None:
    """Every relative link of ``text`` (on ``page``) names a file, and its anchor a heading."""
    assert re.search(r"\]\((?![a-z]+://)", text), "no relative link"
    assert broken_links(text, page) == []


def test_every_link_of_the_page_resolves() -> None:
    assert_links_resolve(TEXT, DOC)


def test_the_readme_points_here_with_the_same_install_lines() -> None:
    """README's "Serve your own model" links each section and gives its install lines."""
    readme = REPO / "README.md"
    pointer = sections(readme.read_text(), level=3)["Serve your own model"]
    assert_links_resolve(pointer, readme)
    for section in FRAMEWORKS:
        assert f"(docs/quickstart.md#{heading_anchor(section)})" in pointer, section
    (block,) = [b for b in code_blocks(pointer) if b.lang == "sh"]
    shown: dict[str, list[str]] = {}
    for line in block.code.splitlines():
        if line.startswith("# "):
            shown[line.removeprefix("# ").split(":")[0]] = lines = []
        else:
            lines.append(line)
    assert shown == {
        section: install_lines(SECTIONS[section])
        for section, framework in FRAMEWORKS.items()
        if framework.plugin is not None
    }


@dataclass
class Served:
    section: str
    framework: Framework
    root: Path
    server: ServerProcess


def run(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    section: str = request.param
    framework = FRAMEWORKS[section]
    absent = [name for name in framework.imports if importlib.util.find_spec(name) is None]
    if absent:
        pytest.skip(f"{section} quickstart: {', '.join(absent)} not installed in this venv")
    root = tmp_path_factory.mktemp(framework.models[0])
    blocks = blocks_of(section)
    written = []
    for block in blocks:
        if header := FILE_HEADER.match(block.first_line):
            target = root / header["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            written.append(header["path"])
    assert written, f"{section}: no file to drop into the repository"
    for block in blocks:
        if block.lang == "sh" and block.code.startswith(".venv/bin/python "):
            (script,) = shlex.split(block.code)[1:]
            assert script in written, f"{section}: {script} is not shown"
            result = run([sys.executable, script], root)
            assert result.returncode == 0, result.stdout + result.stderr
    (serve,) = [b for b in blocks if b.lang == "sh" and "dl-inference serve" in b.code]
    args = shlex.split(serve.code)
    assert args[:2] == [".venv/bin/dl-inference", "serve"], serve.code
    with ServerProcess(args[2:], cwd=root) as server:
        for model in framework.models:
            try:
                urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/ready", timeout=30)
            except urllib.error.HTTPError as error:
                pytest.fail(f"{model} is not ready ({error.code}):\n{server.output()}")
        yield Served(section, framework, root, server)


def test_the_repository_holds_the_files_shown(served: Served) -> None:
    shown = [line for b in blocks_of(served.section) if b.lang == "text" for line in b.code.split()]
    made = sorted(
        p.relative_to(served.root).as_posix()
        for p in (served.root / "models").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(shown) == made


def test_the_metadata_names_the_inputs_and_outputs(served: Served) -> None:
    for model in served.framework.models:
        url = f"{served.server.http_url}/v2/models/{model}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            metadata = json.load(answer)
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]


@pytest.mark.parametrize("shape", [[2, 3], [2, 4, 1]])
def test_a_wrong_shape_is_the_clients_error(served: Served, shape: list[int]) -> None:
    """What the page's 'When something is wrong' promises: 400 naming the input."""
    data = [1] * int(np.prod(shape))
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}
    for model in served.framework.models:
        call = urllib.request.Request(
            f"{served.server.http_url}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(call, timeout=30)
        assert refused.value.code == 400, model
        assert "'x'" in json.load(refused.value)["error"], model


def test_the_curl_calls(served: Served) -> None:
    curls = [
        b.code for b in blocks_of(served.section) if b.lang == "sh" and b.code.startswith("curl")
    ]
    called = {m for code in curls for m in re.findall(r"/v2/models/(\w+)/infer", code)}
    assert called == set(served.framework.models)
    for code in curls:
        assert "localhost:8501" in code, code
        result = run(
            ["bash", "-c", code.replace("localhost:8501", served.server.http_address)], served.root
        )
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        if "/v2/models/" in code:
            assert f"/v2/models/{reply['model_name']}/infer" in code, reply
            (output,) = reply["outputs"]
            assert output["name"] == "y" and output["shape"] == [2, 2], output
            assert output["data"] == EXPECTED.flatten().tolist()
            assert json.loads(shown_answer(code)) == {**reply, "id": "..."}
        else:  # TF Serving's REST predict
            assert reply == {"predictions": EXPECTED.tolist()}
            assert json.loads(shown_answer(code)) == reply


def test_the_tritonclient_calls(served: Served) -> None:
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed ('tritonclient[http]', a test dependency)")
    clients = [
        b.code for b in blocks_of(served.section) if b.lang == "python" and "tritonclient" in b.code
    ]
    called = {m for code in clients for m in re.findall(r'infer\("(\w+)"', code)}
    assert called == set(served.framework.models)
    for client in clients:
        code = client.replace("localhost:8501", served.server.http_address)
        result = run([sys.executable, "-c", code], served.root)
        assert result.returncode == 0, result.stderr
        got = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", result.stdout)])
        assert got.reshape(EXPECTED.shape).tolist() == EXPECTED.tolist(), result.stdout
        shown = [line.removeprefix("# ") for line in client.splitlines() if line.startswith("# ")]
        assert result.stdout.split() == " ".join(shown).split()
