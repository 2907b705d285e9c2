"""docs/migrating-from-tfserving.md, run as written.

The files the page shows are written into a temporary folder standing for the user's
working directory, with the page's ``/models/`` (TF Serving's usual root, an absolute path
as TF Serving's ``base_path`` wants) standing for that folder's ``models/``: the only change,
with the addresses. The make-model script runs there with this venv's python, the page's
``dl-inference serve`` command serves the result (on free ports of 127.0.0.1), and its
TF Serving client (``tensorflow_serving.apis``) and ``curl`` blocks must print what the page
shows. The ``tensorflow_model_server`` command it starts from cannot run here (no TF Serving
binary is installed): its flags are checked against the server config the page gives and
the page's flag table instead. The install line is checked, not run; the links resolve, and
README.md links the page.
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
import tritonclient.grpc as grpcclient
import yaml

from dl_inference.testing import ServerProcess
from dl_inference.testing.markdown import (
    CodeBlock,
    broken_links,
    code_blocks,
    section,
    shown_output,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "migrating-from-tfserving.md"
TEXT = DOC.read_text()
BLOCKS = code_blocks(TEXT)
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|config|yaml))$")
GRPC, HTTP = "localhost:8500", "localhost:8501"
NEEDS = ("tensorflow", "tensorflow_serving", "dl_inference_tensorflow")


def blocks(title: str, lang: str) -> list[CodeBlock]:
    return [b for b in code_blocks(section(TEXT, title)) if b.lang == lang]


def test_the_install_line_works_from_a_checkout() -> None:
    (block,) = blocks("1.", "sh")
    words = shlex.split(block.code)
    assert words[:4] == [".venv/bin/pip", "install", "-c", "requirements/constraints.txt"]
    assert (REPO / words[3]).is_file()
    assert words[4:] == [".", "./plugins/tfserving", "./plugins/tensorflow"]
    assert all((REPO / folder / "pyproject.toml").is_file() for folder in words[4:])


def test_every_link_resolves_and_the_readme_links_the_page() -> None:
    assert broken_links(TEXT, DOC) == []
    assert "(docs/migrating-from-tfserving.md)" in (REPO / "README.md").read_text()


def tf_serving_flags() -> dict[str, str]:
    (command,) = [b for b in blocks("3.", "sh") if "tensorflow_model_server" in b.code]
    words = shlex.split(command.code.replace("\\\n", " "))
    assert words[0] == "tensorflow_model_server"
    return dict(word.removeprefix("--").partition("=")[::2] for word in words[1:])


def server_config_text() -> str:
    (block,) = [b for b in blocks("3.", "yaml") if b.first_line == "# server.yaml"]
    return block.code


def server_config() -> dict:
    return yaml.safe_load(server_config_text())


def test_the_server_config_says_what_the_flags_said() -> None:
    """Each flag of the page's tensorflow_model_server command has its setting, with its
    value, in the page's server.yaml, and a row in the flag table."""
    flags = tf_serving_flags()
    config = server_config()
    tfserving = config["plugin_settings"]["tfserving"]
    assert config["server"]["grpc"]["port"] == int(flags["port"])
    assert config["server"]["http"]["port"] == int(flags["rest_api_port"])
    for flag in (
        "model_config_file",
        "model_config_file_poll_wait_seconds",
        "batching_parameters_file",
    ):
        assert str(tfserving[flag]) == flags[flag], flag
    assert flags["enable_batching"] == "true"
    table = section(TEXT, "4.")
    for flag in flags:
        assert f"--{flag}=" in table, flag


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory: every file the page shows, where it says (``/models/`` as
    ``<root>/models/``), and the make-model script run."""
    absent = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if absent:
        pytest.skip(f"the TF Serving guide needs {', '.join(absent)}, not installed here")
    root = tmp_path_factory.mktemp("migrating-from-tfserving")
    written = []
    for block in BLOCKS:
        if header := FILE_HEADER.match(block.first_line):
            path = header["path"].replace("/models/", "models/")
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(local(block.code, root))
            written.append(path)
    assert sorted(written) == [
        "make_half_plus_two.py",
        "models/batching.config",
        "models/models.config",
        "server.yaml",
    ]
    (make,) = [b for b in blocks("2.", "sh")]
    assert shlex.split(make.code) == [".venv/bin/python", "make_half_plus_two.py"]
    result = subprocess.run(
        [sys.executable, "make_half_plus_two.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def local(code: str, root: Path) -> str:
    return code.replace("/models/", f"{root}/models/")


@dataclass
class Served:
    root: Path
    server: ServerProcess

    def address(self, code: str) -> str:
        """``code`` with the page's addresses replaced by this server's."""
        return code.replace(HTTP, self.server.http_address).replace(GRPC, self.server.grpc_address)


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[Served]:
    (serve,) = [b for b in blocks("3.", "sh") if "dl-inference serve" in b.code]
    args = shlex.split(serve.code)
    assert args == [".venv/bin/dl-inference", "serve", "-c", "server.yaml"]
    with ServerProcess(args[2:], cwd=root) as server:
        yield Served(root, server)


def test_the_tf_serving_client(served: Served) -> None:
    (client,) = blocks("5.", "python")
    result = subprocess.run(
        [sys.executable, "-c", served.address(client.code)],
        cwd=served.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + served.server.output()[-3000:]
    assert result.stdout.split() == shown_output(client.code).split()


def test_the_curl_calls(served: Served) -> None:
    curls = [b.code for b in blocks("5.", "sh") if b.code.startswith("curl")]
    assert len(curls) == 3
    for code in curls:
        assert HTTP in code, code
        result = subprocess.run(
            ["bash", "-c", served.address(code)],
            cwd=served.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == json.loads(shown_output(code)), code


def test_the_files_given_are_left_as_they_are(served: Served) -> None:
    for block in BLOCKS:
        header = FILE_HEADER.match(block.first_line)
        if header and header["path"].startswith("/models/"):
            path = served.root / header["path"].removeprefix("/")
            assert path.read_text() == local(block.code, served.root), path
    # Nothing was written beside the SavedModels either.
    names = sorted(p.name for p in (served.root / "models" / "half_plus_two").iterdir())
    assert names == ["1", "2"]


def http_status(server: ServerProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_files_models_are_served(served: Served) -> None:
    """No model_repository in the page's server.yaml: models.config's model, no demo model."""
    assert "model_repository" not in server_config()
    assert http_status(served.server, "/v2/models/half_plus_two/ready") == 200
    for demo in ("simple", "text_upper"):
        assert http_status(served.server, f"/v2/models/{demo}") == 404, demo


def test_check_config_lists_the_files_models(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", "server.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "models offered by plugins' configuration: half_plus_two" in lines
    assert lines[-1] == "server.yaml: OK (1 model(s): half_plus_two)"


def test_beside_routes_the_files_models_are_served_too(root: Path) -> None:
    """The page's settings in a gateway's config: its route and the file's model answer."""
    with ServerProcess([]) as upstream:  # the built-in demo models, `simple` among them
        config = yaml.safe_load(local(server_config_text(), root))
        config["routes"] = [{"model": "simple", "nodes": [{"address": upstream.grpc_address}]}]
        (root / "gateway.yaml").write_text(yaml.safe_dump(config))
        with ServerProcess(["-c", "gateway.yaml"], cwd=root) as gateway:
            request = urllib.request.Request(
                f"{gateway.http_url}/v1/models/half_plus_two:predict",
                data=json.dumps({"instances": [1.0, 2.0, 5.0]}).encode(),
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                predictions = json.load(answer)["predictions"]
            assert len(predictions) == 3
            client = grpcclient.InferenceServerClient(gateway.grpc_address)
            tensors = []
            for name in ("INPUT0", "INPUT1"):
                tensor = grpcclient.InferInput(name, [1, 16], "INT32")
                tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
                tensors.append(tensor)
            result = client.infer("simple", tensors)
            assert result.as_numpy("OUTPUT0").tolist() == [[2] * 16]
