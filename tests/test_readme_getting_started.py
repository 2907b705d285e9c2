"""README.md's getting-started examples, run as written against ``dl-inference serve`` (demo).

The code blocks are read from the README itself, so an edit that breaks them (a renamed
demo model or input, a wrong JSON body, a missing install line) fails here. Only the
address changes: the server listens on free ports of 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess
from dl_inference.testing.markdown import code_block

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
A = list(range(16))
B = [1] * 16


def block(lang: str, needle: str) -> str:
    """The one ``lang`` code block of the README that contains ``needle``."""
    return code_block(README, lang, needle).code


@pytest.fixture(scope="module")
def demo() -> Iterator[ServerProcess]:
    with ServerProcess() as server:  # no -c, no --model-repository: the built-in demo
        yield server


def test_the_curl_inference_example(demo: ServerProcess) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    code = block("sh", "/v2/models/simple/infer")
    assert "localhost:8501" in code
    command = code.replace("localhost:8501", demo.http_address)
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["model_name"] == "simple" and reply["model_version"] == "1"
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["OUTPUT0"]["data"] == [a + b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT1"]["data"] == [a - b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT0"]["shape"] == [1, 16] and outputs["OUTPUT0"]["datatype"] == "INT32"
    # The answer the README shows in its comment is the one the server gives.
    shown = " ".join(line.lstrip("# ") for line in code.splitlines() if line.startswith("#"))
    assert '"model_name":"simple","model_version":"1"' in shown
    assert '"data":[1,2,...,16]' in shown and '"data":[-1,0,...,14]' in shown


def test_the_python_example_and_its_install_line(demo: ServerProcess) -> None:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a test dependency")
    code = block("python", "tritonclient.grpc")
    intro = README[: README.index(code)].rsplit("\n\n", 2)[-2]
    assert "pip install 'tritonclient[grpc]'" in intro, intro
    assert "localhost:8500" in code
    result = subprocess.run(
        [sys.executable, "-c", code.replace("localhost:8500", demo.grpc_address)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[[", *(str(2 * a) for a in range(15)), "30]]"]
