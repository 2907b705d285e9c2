"""docs/migrating-from-triton.md, run as written.

The files the page shows are written into a temporary folder standing for the user's
working directory; its ``dl-inference serve`` commands serve them (on free ports of
127.0.0.1: only the addresses change, and the management token is one made here), and its
``tritonclient`` and ``curl`` blocks must print what the page shows. The install line is
checked, not run: the paths exist and the constraints file is named. The page's links
resolve, and README.md links the page beside the other migration guides.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess
from dl_inference.testing.markdown import (
    CodeBlock,
    broken_links,
    code_block,
    code_blocks,
    run_shown,
    section,
    shown_output,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "migrating-from-triton.md"
TEXT = DOC.read_text()
BLOCKS = code_blocks(TEXT)
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|pbtxt|yaml))$")
HTTP, GRPC, MANAGEMENT = "localhost:8000", "localhost:8001", "localhost:8510"


def test_the_install_line_works_from_a_checkout() -> None:
    (line,) = [
        line
        for block in code_blocks(section(TEXT, "1."))
        if block.lang == "sh"
        for line in block.code.splitlines()
    ]
    words = shlex.split(line)
    assert words[:4] == [".venv/bin/pip", "install", "-c", "requirements/constraints.txt"]
    assert (REPO / words[3]).is_file()
    assert words[4:] == [".", "./plugins/triton"]
    assert all((REPO / folder / "pyproject.toml").is_file() for folder in words[4:])


def test_every_link_resolves_and_the_readme_links_the_page() -> None:
    assert broken_links(TEXT, DOC) == []
    readme = (REPO / "README.md").read_text()
    assert "(docs/migrating-from-triton.md)" in readme


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory: every file the page shows, where it says."""
    root = tmp_path_factory.mktemp("migrating-from-triton")
    for block in BLOCKS:
        if header := FILE_HEADER.match(block.first_line):
            target = root / header["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
    return root


@dataclass
class Served:
    root: Path
    server: ServerProcess
    token: str = ""

    def address(self, code: str) -> str:
        """``code`` with the page's addresses replaced by this server's."""
        code = code.replace(HTTP, self.server.http_address)
        code = code.replace(GRPC, self.server.grpc_address)
        found = re.search(r"Management gRPC listening on (\S+)", self.server.output())
        return code.replace(MANAGEMENT, found[1]) if found else code


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[Served]:
    """The repository served by the page's first serve command."""
    serve = code_block(section(TEXT, "2."), "sh", "dl-inference serve")
    args = shlex.split(serve.code)
    assert args[:2] == [".venv/bin/dl-inference", "serve"], serve.code
    assert args[2:] == [
        "--model-repository",
        "models",
        "--http-port",
        "8000",
        "--grpc-port",
        "8001",
    ]
    with ServerProcess(args[2:], cwd=root) as server:
        yield Served(root, server)


def client_blocks(title: str) -> list[CodeBlock]:
    return [b for b in code_blocks(section(TEXT, title)) if b.lang == "python"]


@pytest.mark.parametrize("address", [HTTP, GRPC])
def test_the_tritonclient_calls(served: Served, address: str) -> None:
    (block,) = [b for b in client_blocks("4.") if f'"{address}"' in b.code]
    printed = run_shown([sys.executable, "-c", served.address(block.code)], served.root)
    assert printed.split() == shown_output(block.code).split()
    assert printed.split() == [
        "[[5.0,",
        "5.0,",
        "5.0,",
        "5.0]]",
        "[[-3.0,",
        "-1.0,",
        "1.0,",
        "3.0]]",
    ]


@pytest.fixture(scope="module")
def configured(root: Path) -> Iterator[Served]:
    """The page's server.yaml served as its section 3 shows, with the token it makes."""
    (block,) = [b for b in code_blocks(section(TEXT, "3.")) if b.lang == "sh"]
    export, serve = block.code.strip().splitlines()
    assert export.startswith("export DLI_MANAGEMENT_TOKEN=$(")
    token = run_shown(["bash", "-c", f"{export} && echo $DLI_MANAGEMENT_TOKEN"], root).strip()
    assert len(token) >= 16
    args = shlex.split(serve)
    assert args == [".venv/bin/dl-inference", "serve", "-c", "server.yaml"]
    # The management ports are free ones here too (flags override the file).
    flags = ["--management-grpc-port", "0", "--management-http-port", "0"]
    with ServerProcess(
        [*args[2:], *flags], cwd=root, env={"DLI_MANAGEMENT_TOKEN": token}
    ) as server:
        yield Served(root, server, token)


def test_the_configuration_file_serves_with_management(configured: Served) -> None:
    (block,) = [b for b in client_blocks("4.") if MANAGEMENT in b.code]
    assert "Management gRPC listening on" in configured.server.output()
    env = {"PATH": "/usr/bin:/bin", "DLI_MANAGEMENT_TOKEN": configured.token}
    code = configured.address(block.code)
    printed = run_shown([sys.executable, "-c", code], configured.root, env=env)
    assert printed.split() == shown_output(block.code).split() == ["[('add_sub',", "'READY')]"]


def test_the_metrics_carry_tritons_names(configured: Served) -> None:
    (tritonclient,) = [b for b in client_blocks("4.") if f'"{HTTP}"' in b.code]
    run_shown([sys.executable, "-c", configured.address(tritonclient.code)], configured.root)
    (curl,) = [b for b in code_blocks(section(TEXT, "4.")) if b.lang == "sh" and "curl" in b.code]
    command = curl.code.splitlines()[0]
    printed = run_shown(["bash", "-c", configured.address(command)], configured.root)
    assert printed.split() == shown_output(curl.code).split() == ["1"]


def test_the_repository_holds_the_files_shown_and_nothing_else(
    root: Path, served: Served, configured: Served
) -> None:
    """After both servers ran every call of the page: nothing was written into it."""
    (listing,) = [b for b in code_blocks(section(TEXT, "2.")) if b.lang == "text"]
    made = sorted(p.relative_to(root).as_posix() for p in (root / "models").rglob("*"))
    folders = {"models/add_sub", "models/add_sub/1"}
    assert sorted(listing.code.split()) == [p for p in made if p not in folders]
