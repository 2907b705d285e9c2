"""Run-time model management: V2 repository extension, token, roots, CLI; off by default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.testing import ServerProcess, write_python_model

TOKEN = "s3cret-token-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}
GARBAGE = b"\x8a@\xe0"  # a length-delimited field that runs past the end
SERVICE = "inference.GRPCInferenceService"
CONSTANT = """
    from dl_inference import PythonModel

    class Constant(PythonModel):
        def predict(self, inputs):
            return {{"y": inputs["x"] * 0 + {value}}}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def management_address(server: ServerProcess, kind: str) -> str:
    match = re.search(rf"^Management {kind} listening on (\S+)$", server.output(), re.M)
    assert match, server.output()
    return match.group(1)


def infer(address: str, model: str) -> float:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.ones(2, np.float32))
    return float(client.infer(model, [tensor]).as_numpy("y")[0])


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mgmt")
    write_python_model(base / "models", "a", CONSTANT.format(value=1), CONFIG)
    write_python_model(base / "outside", "evil", CONSTANT.format(value=666), CONFIG)
    (base / "models" / "escape").symlink_to(base / "outside" / "evil")
    (base / "server.yaml").write_text(
        "model_repository: models\n"
        "server: {repository_poll_s: 0}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
    )
    return base


@pytest.fixture(scope="module")
def server(layout: Path):
    with ServerProcess(
        ["-c", str(layout / "server.yaml")], env={"DLI_MANAGEMENT_TOKEN": TOKEN}
    ) as srv:
        yield srv


def test_management_needs_the_token(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(management_address(server, "HTTP"))
    with pytest.raises(InferenceServerException, match="need the token"):
        client.get_model_repository_index()
    wrong = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    with pytest.raises(InferenceServerException) as info:
        wrong.get_model_repository_index(headers={"authorization": "Bearer nope"})
    assert "UNAUTHENTICATED" in str(info.value.status())


def test_management_binds_loopback_and_not_the_public_ports(server: ServerProcess) -> None:
    assert management_address(server, "HTTP").startswith("127.0.0.1:")
    public = grpcclient.InferenceServerClient(server.grpc_address)
    with pytest.raises(InferenceServerException) as info:
        public.unload_model("a", headers={"authorization": f"Bearer {TOKEN}"})
    # Refused, naming where the repository extension is served.
    assert "UNAVAILABLE" in str(info.value.status())
    assert management_address(server, "gRPC") in info.value.message()


def test_load_unload_and_index_with_tritonclient(server: ServerProcess, layout: Path) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    admin = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    assert infer(server.grpc_address, "a") == 1
    admin.unload_model("a", headers=headers)
    with pytest.raises(InferenceServerException, match="unknown model 'a'"):
        infer(server.grpc_address, "a")
    index = admin.get_model_repository_index(headers=headers, as_json=True)
    (row,) = [m for m in index["models"] if m["name"] == "a"]
    assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
    # A new model folder, then a load, serves it; a reload picks up new files.
    write_python_model(layout / "models", "b", CONSTANT.format(value=2), CONFIG)
    admin.load_model("b", headers=headers)
    assert infer(server.grpc_address, "b") == 2
    write_python_model(layout / "models", "b", CONSTANT.format(value=3), CONFIG)
    admin.load_model("b", headers=headers)
    assert infer(server.grpc_address, "b") == 3
    admin.load_model("a", headers=headers)
    assert infer(server.grpc_address, "a") == 1


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("../outside/evil", "INVALID_ARGUMENT", "is not allowed"),
        ("/etc", "INVALID_ARGUMENT", "is not allowed"),
        ("escape", "PERMISSION_DENIED", "outside the repository root"),
        ("missing", "NOT_FOUND", "no model folder 'missing'"),
    ],
)
def test_paths_that_leave_the_root_are_refused(
    server: ServerProcess, name: str, status: str, message: str
) -> None:
    admin = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    with pytest.raises(InferenceServerException) as info:
        admin.load_model(name, headers={"authorization": f"Bearer {TOKEN}"})
    assert status in str(info.value.status()) and message in str(info.value)
    assert infer(server.grpc_address, "a") == 1  # still serving


def test_load_parameters_are_refused(server: ServerProcess) -> None:
    admin = httpclient.InferenceServerClient(management_address(server, "HTTP"))
    with pytest.raises(InferenceServerException, match="not supported"):
        admin.load_model(
            "a", headers={"authorization": f"Bearer {TOKEN}"}, config='{"backend": "python"}'
        )


def test_models_command(server: ServerProcess) -> None:
    url = "http://" + management_address(server, "HTTP")
    env = {**os.environ, "DLI_MANAGEMENT_TOKEN": TOKEN}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "dl_inference", "models", *a, "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^a\s+1\s+READY$", listed.stdout, re.M)
    assert run("unload", "a").returncode == 0
    assert "UNAVAILABLE" in run("list").stdout
    assert run("load", "a").stdout.strip() == "a: loaded"
    refused = run("load", "../x")
    assert refused.returncode == 1 and "is not allowed" in refused.stderr


def test_management_is_off_by_default_and_needs_a_token(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "a", CONSTANT.format(value=1), CONFIG)
    with ServerProcess(["--model-repository", str(tmp_path / "models")]) as plain:
        assert "Management" not in plain.output()
    config = tmp_path / "server.yaml"
    config.write_text("model_repository: models\nmanagement: {enabled: true}\n")
    env = {k: v for k, v in os.environ.items() if k != "DLI_MANAGEMENT_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DLI_MANAGEMENT_TOKEN" in result.stderr


# -- hostile input: client errors, on the kernel's call path ---------------------------------


def grpc_call(server: ServerProcess, method: str, body: bytes, metadata=()) -> grpc.RpcError:
    """The error a raw management gRPC call of ``body`` ends with (it must fail)."""
    with grpc.insecure_channel(management_address(server, "gRPC")) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(body, metadata=metadata, timeout=30)
    return info.value


def management_failures(server: ServerProcess, status: str) -> float:
    """Management calls that ended with ``status`` in the public /metrics: none ever, since
    they are not inference requests (answered with their codes, logged at debug)."""
    text = requests.get(f"{server.http_url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dli_requests_total{")
        and 'protocol="management"' in line
        and f'status="{status}"' in line
    )


@pytest.mark.parametrize(
    "method", ["RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"]
)
def test_unparsable_grpc_bodies_are_invalid_argument_after_the_token(
    server: ServerProcess, method: str
) -> None:
    before = management_failures(server, "INVALID_ARGUMENT")
    error = grpc_call(server, method, GARBAGE, [("authorization", f"Bearer {TOKEN}")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "could not be read" in error.details()
    assert len(dict(error.trailing_metadata() or ()).get("x-request-id", "")) == 32
    assert management_failures(server, "INVALID_ARGUMENT") == before == 0
    # Without the token the body is not even parsed.
    for metadata in ((), [("authorization", "Bearer nope")]):
        error = grpc_call(server, method, GARBAGE, metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert "need the token" in error.details()


def grpc_load(**parameters: dict[str, object]) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name="a")
    for name, value in parameters.items():
        request.parameters[name].MergeFrom(pb.ModelRepositoryParameter(**value))
    return request


@pytest.mark.parametrize(
    ("method", "request_message", "message"),
    [
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(), "model_name is empty"),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(), "model_name is empty"),
        ("RepositoryModelLoad", grpc_load(config={"int64_param": 1}), "'config' must be a string"),
        ("RepositoryModelLoad", grpc_load(config={}), "'config' has no value"),
        (
            "RepositoryModelLoad",
            grpc_load(**{"file:1/model.py": {"bool_param": True}}),
            "'file:1/model.py' must be the file's content",
        ),
        (
            "RepositoryModelUnload",
            pb.RepositoryModelUnloadRequest(
                model_name="a",
                parameters={"unload_dependents": pb.ModelRepositoryParameter(string_param="yes")},
            ),
            "'unload_dependents' must be true or false",
        ),
    ],
)
def test_grpc_fields_are_type_checked(
    server: ServerProcess, method: str, request_message, message: str
) -> None:
    error = grpc_call(server, method, request_message.SerializeToString(), list(AUTH.items()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()
    assert infer(server.grpc_address, "a") == 1  # neither loaded nor unloaded


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("index", b"not json", "is not valid JSON"),
        ("index", b"[]", "must be a JSON object, got an array"),
        ("index", b'{"ready": "false"}', '"ready" must be true or false, got a string'),
        ("models/a/load", DEEP, "nests arrays or objects more than"),
        ("models/a/load", b'{"parameters": ' + DEEP + b"}", "nests arrays or objects"),
        ("models/a/load", b"\xff\xfe{}", "is not UTF-8"),
        ("models/a/load", b'{"parameters": ["config"]}', '"parameters" must be a JSON object'),
        ("models/a/load", b'{"parameters": 5}', "got a number"),
        ("models/a/load", b'{"parameters": {"config": {}}}', "'config' must be a string"),
        ("models/a/load", b'{"parameters": {"x": null}}', "must be a string, number or boolean"),
        ("models/a/unload", b'{"parameters": [1]}', '"parameters" must be a JSON object'),
        (
            "models/a/unload",
            b'{"parameters": {"unload_dependents": 1}}',
            "'unload_dependents' must be true or false",
        ),
        ("models/a/unload", b'"a"', "must be a JSON object, got a string"),
    ],
)
def test_bad_rest_bodies_are_400_and_a_wrong_token_401(
    server: ServerProcess, path: str, body: bytes, message: str
) -> None:
    url = f"http://{management_address(server, 'HTTP')}/v2/repository/{path}"
    before = management_failures(server, "INVALID_ARGUMENT")
    reply = requests.post(url, data=body, headers=AUTH, timeout=30)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]
    assert reply.headers["x-request-id"]
    assert management_failures(server, "INVALID_ARGUMENT") == before == 0
    for headers in ({}, {"authorization": "Bearer nope"}):
        refused = requests.post(url, data=body, headers=headers, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "need the token" in refused.json()["error"]
    assert infer(server.grpc_address, "a") == 1  # neither loaded nor unloaded


def test_load_and_unload_work_after_hostile_calls(server: ServerProcess) -> None:
    base = f"http://{management_address(server, 'HTTP')}/v2/repository"
    for body in (b"\x00garbage", DEEP):
        refused = requests.post(f"{base}/models/a/load", data=body, headers=AUTH, timeout=30)
        assert refused.status_code == 400
        assert grpc_call(server, "RepositoryModelLoad", GARBAGE, list(AUTH.items())).code() == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    unload = {"parameters": {"unload_dependents": False}}
    done = requests.post(f"{base}/models/a/unload", json=unload, headers=AUTH, timeout=30)
    assert done.status_code == 200
    ready = requests.post(f"{base}/index", json={"ready": True}, headers=AUTH, timeout=30)
    assert "a" not in [row["name"] for row in ready.json()]
    with pytest.raises(InferenceServerException, match="unknown model 'a'"):
        infer(server.grpc_address, "a")
    done = requests.post(f"{base}/models/a/load", json={}, headers=AUTH, timeout=30)
    assert done.status_code == 200
    assert infer(server.grpc_address, "a") == 1
    admin = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    admin.unload_model("a", headers=AUTH, unload_dependents=True)
    admin.load_model("a", headers=AUTH)
    assert infer(server.grpc_address, "a") == 1
    index = admin.get_model_repository_index(headers=AUTH, as_json=True)
    assert "a" in [row["name"] for row in index["models"]]
