"""docs/migrating-from-torchserve.md, run as written.

The files the page shows are written into a temporary folder standing for the user's
working directory; its archive block runs there (``torch-model-archiver`` is TorchServe's
own tool, not dl-inference's: it is taken from the TorchServe reference venv, and the
store's tests skip, saying why, where that venv is missing); its ``dl-inference serve``
block serves the store through the page's ``server.yaml`` and ``config.properties`` with
the token its export line makes (on free ports of 127.0.0.1: only the addresses change),
and its ``curl``, ``requests``, TorchServe gRPC stub and management blocks must print
what the page shows. The same blocks run against the real TorchServe 0.12 serving a copy
of the same store with the page's ``config.properties`` (where a Java runtime is present):
the answers the page shows are TorchServe's, not only ours. The stubs are the one thing the
page does not make: a TorchServe user has them already, so they are compiled here from the
``inference.proto`` TorchServe's server jar ships, under the names the page imports. The
install lines are checked, not run; the links resolve, and README.md links the page.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess, free_port
from dl_inference.testing.markdown import (
    CodeBlock,
    broken_links,
    code_blocks,
    run_shown,
    section,
    shown_output,
)
from tests.reference.torchserve import (
    TorchServeServer,
    compile_jar_proto,
    skip_without_torchserve,
)
from tests.reference.triton import file_hashes, reference_venv

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "migrating-from-torchserve.md"
TEXT = DOC.read_text()
BLOCKS = code_blocks(TEXT)
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|properties|yaml))$")
HTTP, GRPC, MANAGEMENT = "127.0.0.1:8080", "127.0.0.1:7070", "127.0.0.1:8081"
# The handler's [6.0, -1.0] as TorchServe answers it: JSON indented by 2, one number a line.
INDENTED = "[\n  6.0,\n  -1.0\n]"


def blocks(title: str, lang: str) -> list[CodeBlock]:
    return [b for b in code_blocks(section(TEXT, title)) if b.lang == lang]


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
    """The TorchServe reference venv's bin folder, which has ``torch-model-archiver``;
    skips, saying why, where it has not."""
    folder = reference_venv("torchserve") / "bin"
    if not (folder / "torch-model-archiver").is_file():
        pytest.skip(
            f"the page's archive step needs TorchServe's torch-model-archiver, not in {folder}"
            " (scripts/install_reference_servers.sh)"
        )
    return folder


def hashes(store: Path) -> dict[str, str]:
    """The store's files and their hashes, by name within it."""
    return {str(Path(path).relative_to(store)): h for path, h in file_hashes(store).items()}


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
    command = make.code.replace(".venv/bin/", f"{REPO}/.venv/bin/")
    run_shown(["bash", "-e", "-c", command], root, env)
    assert sorted(p.name for p in (root / "model-store").iterdir()) == ["rows.mar"]
    return root


@dataclass
class Served:
    """A server of the page's store: where the page's addresses are, and its token."""

    root: Path
    addresses: dict[str, str]
    token: str

    def address(self, code: str) -> str:
        """``code`` with the page's addresses replaced by this server's."""
        for page, here in self.addresses.items():
            code = code.replace(page, here)
        return code


@dataclass
class Ours(Served):
    server: ServerProcess
    store: dict[str, str]


def with_free_ports() -> tuple[str, dict[str, str]]:
    """The page's config.properties with free ports of 127.0.0.1 in its addresses (the
    only change), and where each of the page's addresses went."""
    (block,) = [b for b in BLOCKS if b.first_line == "# config.properties"]
    ports = {address: f"127.0.0.1:{free_port()}" for address in (HTTP, GRPC, MANAGEMENT)}
    config = block.code
    for page, here in ports.items():
        config = config.replace(page, here)
    # The gRPC listener is a port alone in the file.
    grpc_port = f"grpc_inference_port={GRPC.rsplit(':', 1)[1]}\n"
    assert grpc_port in config
    config = config.replace(grpc_port, f"grpc_inference_port={ports[GRPC].rsplit(':', 1)[1]}\n")
    return config, ports


@pytest.fixture(scope="module")
def ours(root: Path) -> Iterator[Ours]:
    """The store served as the page's section 2 says, with the token its export line makes,
    on the listeners config.properties names (no flag: the file's addresses are applied)."""
    (block,) = [b for b in blocks("2.", "sh") if "dl-inference serve" in b.code]
    export, serve = block.code.strip().splitlines()
    assert export.startswith("export DLI_MANAGEMENT_TOKEN=$(")
    token = run_shown(["bash", "-c", f"{export} && echo $DLI_MANAGEMENT_TOKEN"], root).strip()
    assert len(token) >= 16
    args = shlex.split(serve)
    assert args == [".venv/bin/dl-inference", "serve", "-c", "server.yaml"]
    store = hashes(root / "model-store")
    config, ports = with_free_ports()
    (root / "config.properties").write_text(config)
    # The management gRPC listener, which the page leaves at its default port, on a free one.
    flags = ["--management-grpc-port", "0"]
    env = {"DLI_MANAGEMENT_TOKEN": token}
    with ServerProcess([*args[2:], *flags], cwd=root, env=env, extra_flags=False) as server:
        found = re.search(r"Management HTTP listening on (\S+)", server.output())
        assert found, server.output()
        served = {HTTP: server.http_address, GRPC: server.grpc_address, MANAGEMENT: found[1]}
        assert served == ports, server.output()
        # The page's file turns TorchServe's token authorization off: no warning about it
        # (printed while configuring, before the listening lines waited for above).
        assert "token authorization" not in server.output(), server.output()
        yield Ours(root, ports, token, server, store)


@pytest.fixture(scope="module")
def theirs(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real TorchServe 0.12 on a copy of the page's store, with its config.properties
    (free ports; the listeners the page leaves at their defaults named too, as the helper
    needs), so that what the page shows is proven to be TorchServe's answer, not only ours."""
    skip_without_torchserve()
    work = tmp_path_factory.mktemp("torchserve")
    store = work / "model-store"
    shutil.copytree(root / "model-store", store)
    config, ports = with_free_ports()
    config += (
        "grpc_inference_address=127.0.0.1\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\n"
        "grpc_management_address=127.0.0.1\n"
        f"grpc_management_port={free_port()}\n"
        "disable_system_metrics=true\n"
    )
    (work / "config.properties").write_text(config)
    with TorchServeServer(store, work, config_properties=work / "config.properties"):
        yield Served(root, ports, token="")


@pytest.fixture(params=["dl-inference", "torchserve"])
def served(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue("ours" if request.param == "dl-inference" else "theirs")


def test_the_curl_call(served: Served) -> None:
    (curl,) = [b for b in blocks("4.", "sh") if "/predictions/" in b.code]
    assert HTTP in curl.code
    command = curl.code.splitlines()[0]
    printed = run_shown(["bash", "-c", served.address(command)], served.root)
    assert printed == shown_output(curl.code, "\n") == INDENTED


def test_the_requests_client(served: Served) -> None:
    (block,) = [b for b in blocks("4.", "python") if "import requests" in b.code]
    printed = run_shown([sys.executable, "-c", served.address(block.code)], served.root)
    assert printed.removesuffix("\n") == shown_output(block.code, "\n") == "200 [6.0, 1.0]"


def test_torchserves_grpc_stubs(served: Served, tmp_path: Path) -> None:
    (block,) = [b for b in blocks("4.", "python") if "inference_pb2_grpc" in b.code]
    assert GRPC in block.code
    # The one thing the page cannot make: a TorchServe user has these modules already.
    compile_jar_proto(reference_bin().parent, "inference", tmp_path, "inference")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    printed = run_shown([sys.executable, "-c", served.address(block.code)], served.root, env)
    assert printed.removesuffix("\n") == shown_output(block.code, "\n") == INDENTED


def test_the_management_call(served: Served) -> None:
    """TorchServe runs without token auth here (the helper's choice): the header the page
    sends is ignored there, required by dl-inference."""
    (curl,) = [b for b in blocks("4.", "sh") if MANAGEMENT in b.code]
    assert "$DLI_MANAGEMENT_TOKEN" in curl.code
    command = curl.code.splitlines()[0]
    env = {**os.environ, "DLI_MANAGEMENT_TOKEN": served.token}
    printed = run_shown(["bash", "-c", served.address(command)], served.root, env)
    assert printed.removesuffix("\n") == shown_output(curl.code, "\n")


def http_status(served: Ours, path: str) -> int:
    try:
        with urllib.request.urlopen(served.server.http_url + path, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_stores_model_is_served_and_the_store_is_left_as_it_was(ours: Ours) -> None:
    """No model_repository in the page's server.yaml: load_models' archive, no demo model;
    after the calls, the store holds the archive alone, unchanged."""
    assert http_status(ours, "/v2/models/rows/ready") == 200
    for demo in ("simple", "text_upper"):
        assert http_status(ours, f"/v2/models/{demo}") == 404, demo
    assert hashes(ours.root / "model-store") == ours.store


def test_the_batch_settings_of_config_properties_are_applied(served: Served) -> None:
    """config.properties' ``models=`` line, as TorchServe's describe reports it."""
    (block,) = [b for b in BLOCKS if b.first_line == "# config.properties"]
    (line,) = [line for line in block.code.splitlines() if line.startswith("models=")]
    settings = json.loads(line.removeprefix("models="))["rows"]["1.0"]
    request = urllib.request.Request(
        f"http://{served.addresses[MANAGEMENT]}/models/rows",
        headers={"Authorization": f"Bearer {served.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        (described,) = json.load(answer)
    assert described["batchSize"] == settings["batchSize"] == 4
    assert described["maxBatchDelay"] == settings["maxBatchDelay"] == 50
