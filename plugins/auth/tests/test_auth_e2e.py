"""The auth plugin in the real server (a subprocess), called by real clients.

One server per module, configured with three keys: one from an environment variable, one
from a file, one given as a SHA-256 digest. Two models: ``add_one`` and ``times_two``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

READER_KEY = "e2e-reader-key-0123456789abcdef"
ADMIN_KEY = "e2e-admin-key-fedcba9876543210"
SCALER_KEY = "e2e-scaler-key-00112233445566778899"
READER_ENV = "DLI_AUTH_E2E_READER"

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
TIMES_TWO = """
    from dl_inference import PythonModel

    class TimesTwo(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] * 2}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""

X = np.array([1.5, -2.0, 3.25], dtype=np.float32)


def server_yaml(tmp: Path, repo: Path, auth: str) -> Path:
    path = tmp / "server.yaml"
    path.write_text(
        f"model_repository: {repo}\nplugin_settings:\n  auth:\n{textwrap.indent(auth, '    ')}"
    )
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auth") / "models"
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    write_python_model(root, "times_two", TIMES_TWO, CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    key_file = repo.parent / "scaler.key"
    key_file.write_text(SCALER_KEY + "\n")
    admin_digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    config = server_yaml(
        repo.parent,
        repo,
        textwrap.dedent(
            f"""\
            keys:
              - {{name: reader, env: {READER_ENV}, models: [add_one]}}
              - {{name: admin, sha256: {admin_digest}, models: ["*"]}}
              - {{name: scaler, file: {key_file}, models: ["times_*"]}}
            """
        ),
    )
    with ServerProcess(["-c", str(config)], env={READER_ENV: READER_KEY}) as srv:
        yield srv


def grpc_infer(
    server: ServerProcess, model: str, headers: dict[str, str] | None = None
) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        return client.infer(model, [tensor], headers=headers).as_numpy("y")
    finally:
        client.close()


def http_infer(
    server: ServerProcess, model: str, headers: dict[str, str] | None = None
) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        tensor = httpclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        return client.infer(model, [tensor], headers=headers).as_numpy("y")
    finally:
        client.close()


def http_call(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def v2_body() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": X.tolist()}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- V2 gRPC (tritonclient.grpc) ---------------------------------------------------------------


def test_grpc_without_a_key_is_unauthenticated(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, "add_one")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "'authorization: Bearer <key>'" in caught.value.message()


def test_grpc_with_an_unknown_key_is_unauthenticated(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, "add_one", bearer("not-a-key-of-this-server-000"))
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "not valid" in caught.value.message()


def test_grpc_key_on_the_wrong_model_is_permission_denied(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, "times_two", bearer(READER_KEY))
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "'reader' may not call model 'times_two'" in caught.value.message()


def test_grpc_good_keys_get_answers(server: ServerProcess) -> None:
    np.testing.assert_array_equal(grpc_infer(server, "add_one", bearer(READER_KEY)), X + 1)
    # The digest-configured admin key may call anything; the file key its glob.
    np.testing.assert_array_equal(grpc_infer(server, "times_two", bearer(ADMIN_KEY)), X * 2)
    np.testing.assert_array_equal(grpc_infer(server, "times_two", {"x-api-key": SCALER_KEY}), X * 2)


# -- V2 REST (tritonclient.http and plain HTTP) ------------------------------------------------


def test_http_tritonclient_statuses(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as caught:
        http_infer(server, "add_one")
    assert caught.value.status() == "401"
    with pytest.raises(InferenceServerException) as caught:
        http_infer(server, "add_one", {"x-api-key": SCALER_KEY})
    assert caught.value.status() == "403"
    assert "'scaler' may not call model 'add_one'" in caught.value.message()
    np.testing.assert_array_equal(http_infer(server, "add_one", {"x-api-key": READER_KEY}), X + 1)


def test_plain_http(server: ServerProcess) -> None:
    url = f"{server.http_url}/v2/models/add_one/infer"
    status, body = http_call(url, v2_body())
    assert status == 401
    assert "needs an API key" in body["error"]
    status, body = http_call(url, v2_body(), {"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401
    assert "must read 'Bearer <key>'" in body["error"]
    status, body = http_call(
        f"{server.http_url}/v2/models/times_two/infer", v2_body(), bearer(READER_KEY)
    )
    assert status == 403
    status, body = http_call(url, v2_body(), bearer(READER_KEY))
    assert status == 200
    np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32), X + 1)


def test_tf_serving_rest_is_protected_too(server: ServerProcess) -> None:
    pytest.importorskip("dl_inference_tensorflow")
    url = f"{server.http_url}/v1/models/add_one:predict"
    body = {"inputs": {"x": X.tolist()}}
    status, reply = http_call(url, body)
    assert status == 401, reply
    status, reply = http_call(url, body, bearer(READER_KEY))
    assert status == 200, reply
    np.testing.assert_array_equal(np.asarray(reply["outputs"], np.float32), X + 1)


# -- what stays open, and the server after all of it ----------------------------------------------


def test_health_metadata_and_metrics_stay_open(server: ServerProcess) -> None:
    assert http_call(f"{server.http_url}/v2/models/add_one/infer", v2_body())[0] == 401
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("times_two")
        assert client.get_model_metadata("times_two").name == "times_two"
    finally:
        client.close()
    status, body = http_call(f"{server.http_url}/v2/models/add_one")
    assert status == 200 and body["name"] == "add_one"
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=30) as reply:
        assert reply.status == 200
        # Refusals are counted like any other outcome.
        assert 'status="UNAUTHENTICATED"' in reply.read().decode()


def test_server_keeps_serving_and_never_logs_secrets(server: ServerProcess) -> None:
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            grpc_infer(server, "add_one", bearer("wrong-wrong-wrong-wrong"))
    np.testing.assert_array_equal(grpc_infer(server, "add_one", bearer(ADMIN_KEY)), X + 1)
    output = server.output()
    assert "UNAUTHENTICATED" in output  # the access log records refusals
    for secret in (READER_KEY, ADMIN_KEY, SCALER_KEY):
        assert secret not in output


# -- bad settings stop the server before it listens ----------------------------------------------


@pytest.mark.parametrize(
    ("auth", "named"),
    [
        (
            "keys:\n  - {name: a, env: DLI_AUTH_E2E_UNSET, models: ['*']}\n",
            "plugin_settings.auth.keys[0].env: the environment variable DLI_AUTH_E2E_UNSET",
        ),
        ("keyz: []\n", "plugin_settings.auth.keyz: unknown key (did you mean keys?)"),
    ],
)
def test_bad_settings_exit_2_naming_the_key(
    repo: Path, tmp_path: Path, auth: str, named: str
) -> None:
    config = server_yaml(tmp_path, repo, auth)
    for command in (
        ["serve", "-c", str(config), "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"],
        ["check-config", str(config)],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "dl_inference", *command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert named in result.stderr
        assert "listening" not in result.stdout


# -- behind the gateway: the worker decides, the gateway relays --------------------------------


def test_gateway_forwards_credentials_and_relays_refusals(
    server: ServerProcess, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n"
        "  - model: add_one\n"
        "    retries: 0\n"
        f"    nodes: [{{address: '{server.grpc_address}'}}]\n"
    )
    with ServerProcess(["-c", str(config)]) as gateway:
        with pytest.raises(InferenceServerException) as caught:
            grpc_infer(gateway, "add_one")
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "needs an API key" in caught.value.message()
        for _ in range(5):
            with pytest.raises(InferenceServerException):
                grpc_infer(gateway, "add_one", bearer("wrong-wrong-wrong-wrong"))
        # A refusal is the caller's fault, not the node's: it must not get the node ejected.
        status, body = http_call(f"{gateway.http_url}/api/status")
        assert status == 200
        assert [node["state"] for node in body["routes"]] == ["healthy"]
        np.testing.assert_array_equal(grpc_infer(gateway, "add_one", bearer(READER_KEY)), X + 1)
