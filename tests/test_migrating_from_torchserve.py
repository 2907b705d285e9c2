"""docs/migrating-from-torchserve.md, run as written.

The files the page shows are written into a temporary folder standing for the user's
working directory; its archive block runs there (``torch-model-archiver`` is TorchServe's
own tool, not dl-inference's: it is taken from the TorchServe reference venv, and the
store's tests skip, saying why, where that venv is missing); its ``dl-inference serve``
command serves the store through the page's ``server.yaml`` and ``config.properties`` (on
free ports of 127.0.0.1: only the addresses change), and its ``curl``, ``requests`` and
TorchServe gRPC stub blocks must print what the page shows. The stubs are the one thing
the page does not make: a TorchServe user has them already, so they are compiled here
from the ``inference.proto`` TorchServe's server jar ships, under the names the page
imports. The install lines are checked, not run; the links resolve, and README.md links
the page.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess
from dl_inference.testing.markdown import (
    CodeBlock,
    broken_links,
    code_blocks,
    section,
)
from tests.reference.torchserve import torchserve_home

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "migrating-from-torchserve.md"
TEXT = DOC.read_text()
BLOCKS = code_blocks(TEXT)
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|properties|yaml))$")
HTTP, GRPC = "127.0.0.1:8080", "127.0.0.1:7070"
# The handler's [6.0, -1.0] as TorchServe answers it: JSON indented by 2, one number a line.
INDENTED = "[\n  6.0,\n  -1.0\n]"


def blocks(title: str, lang: str) -> list[CodeBlock]:
    return [b for b in code_blocks(section(TEXT, title)) if b.lang == lang]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def shown_text(code: str) -> str:
    """What a block says it prints, line by line: its trailing ``# `` comment lines (the
    layout kept, which ``shown_output`` joins into one line)."""
    lines = code.rstrip("\n").splitlines()
    start = len(lines)
    while start and lines[start - 1].startswith("# "):
        start -= 1
    return "\n".join(line.removeprefix("# ") for line in lines[start:])


def test_the_install_lines_work_from_a_checkout() -> None:
    (block,) = blocks("1.", "sh")
    torch_line, plugin_line = (shlex.split(line) for line in block.code.splitlines())
    for words in (torch_line, plugin_line):
        assert words[:4] == [".venv/bin/pip", "install", "-c", "requirements/constraints.txt"]
    constraints = (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    # The torch pin is the one the constraints file holds (pip refuses another).
    assert torch_line[4:] == [line for line in constraints if line.startswith("torch==")]
    assert plugin_line[4:] == [".", "./plugins/torchserve[torch]"]
    pyproject = (REPO / "plugins" / "torchserve" / "pyproject.toml").read_text()
    assert "\ntorch = [" in pyproject  # the extra the line names
    assert (REPO / "pyproject.toml").is_file()


def test_every_link_resolves_and_the_readme_links_the_page() -> None:
    assert broken_links(TEXT, DOC) == []
    assert "(docs/migrating-from-torchserve.md)" in (REPO / "README.md").read_text()


def test_the_settings_table_has_a_row_for_each_setting_the_example_uses() -> None:
    (properties,) = [b for b in BLOCKS if b.first_line == "# config.properties"]
    table = section(TEXT, "3.")
    for line in properties.code.splitlines()[1:]:
        key = line.partition("=")[0]
        assert f"`{key}=" in table or f"`{key}`" in table, key


def reference_bin() -> Path:
    """The TorchServe venv's bin folder (its ``torch-model-archiver``); skips, saying why,
    where it cannot be used."""
    found = torchserve_home()
    if isinstance(found, str):
        pytest.skip(f"the page's archive step needs TorchServe's torch-model-archiver: {found}")
    return found / "bin"


def hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory: every file the page shows, and its archive block run."""
    pytest.importorskip("torch")
    archiver = reference_bin()
    root = tmp_path_factory.mktemp("migrating-from-torchserve")
    written = []
    for block in BLOCKS:
        if header := FILE_HEADER.match(block.first_line):
            (root / header["path"]).write_text(block.code)
            written.append(header["path"])
    assert sorted(written) == ["config.properties", "handler.py", "make_model.py", "server.yaml"]
    (make,) = [b for b in blocks("2.", "sh") if "torch-model-archiver" in b.code]
    assert make.code.startswith(".venv/bin/python make_model.py\n")
    env = {**os.environ, "PATH": f"{archiver}:{os.environ['PATH']}"}
    run(["bash", "-e", "-c", make.code.replace(".venv/bin/", f"{REPO}/.venv/bin/")], root, env)
    assert sorted(p.name for p in (root / "model-store").iterdir()) == ["rows.mar"]
    return root


@dataclass
class Served:
    root: Path
    server: ServerProcess
    store: dict[str, str]

    def address(self, code: str) -> str:
        """``code`` with the page's addresses replaced by this server's."""
        return code.replace(HTTP, self.server.http_address).replace(GRPC, self.server.grpc_address)


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[Served]:
    (serve,) = [b for b in blocks("2.", "sh") if "dl-inference serve" in b.code]
    args = shlex.split(serve.code)
    assert args == [".venv/bin/dl-inference", "serve", "-c", "server.yaml"]
    store = hashes(root / "model-store")
    # Free ports instead of config.properties' 8080 and 7070 (a flag wins over the file).
    with ServerProcess(args[2:], cwd=root) as server:
        yield Served(root, server, store)


def test_the_curl_call(served: Served) -> None:
    (curl,) = [b for b in blocks("4.", "sh") if b.code.startswith("curl")]
    assert HTTP in curl.code
    command = curl.code.splitlines()[0]
    printed = run(["bash", "-c", served.address(command)], served.root)
    assert printed == shown_text(curl.code) == INDENTED


def test_the_requests_client(served: Served) -> None:
    (block,) = [b for b in blocks("4.", "python") if "import requests" in b.code]
    printed = run([sys.executable, "-c", served.address(block.code)], served.root)
    assert printed.removesuffix("\n") == shown_text(block.code) == "200 [6.0, 1.0]"


def compile_torchserve_stubs(folder: Path) -> None:
    """``inference_pb2`` / ``inference_pb2_grpc`` in ``folder``: TorchServe's own client
    modules, from the ``inference.proto`` (and the ``google/rpc/status.proto`` it imports)
    of its server jar, by ``grpc_tools.protoc`` as a TorchServe user compiles them."""
    jars = sorted(reference_bin().parent.glob("lib/python3.*/site-packages/ts/frontend/*.jar"))
    if not jars:
        pytest.skip("no TorchServe server jar in the reference venv to take inference.proto from")
    protos = folder / "torchserve-proto"
    with zipfile.ZipFile(jars[-1]) as jar:
        jar.extract("inference.proto", protos)
        jar.extract("google/rpc/status.proto", protos)
    run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(protos / "inference.proto"),
        ],
        folder,
    )


def test_torchserves_grpc_stubs(served: Served, tmp_path: Path) -> None:
    (block,) = [b for b in blocks("4.", "python") if "inference_pb2_grpc" in b.code]
    assert GRPC in block.code
    compile_torchserve_stubs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    printed = run([sys.executable, "-c", served.address(block.code)], served.root, env)
    assert printed.removesuffix("\n") == shown_text(block.code) == INDENTED


def http_status(served: Served, path: str) -> int:
    try:
        with urllib.request.urlopen(served.server.http_url + path, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_stores_model_is_served_and_the_store_is_left_as_it_was(
    served: Served,
) -> None:
    """No model_repository in the page's server.yaml: load_models' archive, no demo model;
    after the calls, the store holds the archive alone, unchanged."""
    assert http_status(served, "/v2/models/rows/ready") == 200
    for demo in ("simple", "text_upper"):
        assert http_status(served, f"/v2/models/{demo}") == 404, demo
    assert hashes(served.root / "model-store") == served.store
