"""TLS and mutual TLS on the gRPC and HTTP listeners, with certificates made by openssl."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


def serve(pki: Path, tmp_path: Path, mutual: bool) -> ServerProcess:
    write_python_model(tmp_path / "models", "add_one", ADD_ONE, CONFIG)
    tls = f"cert_file: {pki / 'server.pem'}, key_file: {pki / 'server.key'}"
    if mutual:
        tls += f", client_ca_file: {pki / 'ca.pem'}"
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: models\nserver: {{tls: {{{tls}}}}}\n")
    return ServerProcess(["-c", str(config)])


def infer(address: str, pki: Path, client_cert: bool) -> np.ndarray:
    client = grpcclient.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(pki / "ca.pem"),
        private_key=str(pki / "client.key") if client_cert else None,
        certificate_chain=str(pki / "client.pem") if client_cert else None,
    )
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    return client.infer("add_one", [tensor], client_timeout=10).as_numpy("y")


def https_ready(url: str, context: ssl.SSLContext) -> dict:
    with urllib.request.urlopen(url + "/v2/health/ready", context=context, timeout=10) as reply:
        return json.loads(reply.read())


def https_infer_then_ready(url: str, context: ssl.SSLContext) -> tuple[list, dict]:
    """V2 infer (the HTTP/1.1 lane's route) and then readiness (aiohttp's, the connection
    handed over) on one TLS connection."""
    host, port = url.split("//")[1].rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    connection.request("POST", "/v2/models/add_one/infer", json.dumps(body))
    outputs = json.loads(connection.getresponse().read())["outputs"][0]["data"]
    connection.request("GET", "/v2/health/ready")
    ready = json.loads(connection.getresponse().read())
    connection.close()
    return outputs, ready


def test_tls_serves_grpc_and_https(pki: Path, tmp_path: Path) -> None:
    with serve(pki, tmp_path, mutual=False) as server:
        np.testing.assert_array_equal(
            infer(server.grpc_address, pki, False), np.ones(2, np.float32)
        )
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        assert https_ready(server.http_url.replace("http:", "https:"), context) == {"ready": True}
        assert https_infer_then_ready(server.http_url.replace("http:", "https:"), context) == (
            [2.0, 3.0],
            {"ready": True},
        )
        plain = grpcclient.InferenceServerClient(server.grpc_address)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=3)  # plaintext is not spoken


def test_mutual_tls_requires_a_client_certificate(pki: Path, tmp_path: Path) -> None:
    with serve(pki, tmp_path, mutual=True) as server:
        np.testing.assert_array_equal(infer(server.grpc_address, pki, True), np.ones(2, np.float32))
        with pytest.raises(InferenceServerException):
            infer(server.grpc_address, pki, False)
        url = server.http_url.replace("http:", "https:")
        anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_ready(url, anonymous)
        known = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        known.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        assert https_ready(url, known) == {"ready": True}


def test_unreadable_certificate_is_a_config_error(pki: Path, tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "add_one", ADD_ONE, CONFIG)
    config = tmp_path / "server.yaml"
    config.write_text(
        "model_repository: models\n"
        f"server: {{tls: {{cert_file: missing.pem, key_file: {pki / 'server.key'}}}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "server.tls.cert_file: cannot read" in result.stderr


def test_gateway_reaches_a_mutual_tls_upstream(pki: Path, tmp_path: Path) -> None:
    with serve(pki, tmp_path / "worker", mutual=True) as worker:
        route = (
            f"routes:\n  - model: add_one\n    balancer: round_robin\n"
            f"    nodes: [{{address: '{worker.grpc_address}', weight: 1, "
            f"http_address: '{worker.http_address}'}}]\n"
            f"    tls: {{ca_file: {pki / 'ca.pem'}, cert_file: {pki / 'client.pem'}, "
            f"key_file: {pki / 'client.key'}}}\n"
        )
        config = tmp_path / "gateway.yaml"
        config.write_text(route)
        with ServerProcess(["-c", str(config)]) as gateway:
            client = grpcclient.InferenceServerClient(gateway.grpc_address)
            tensor = grpcclient.InferInput("x", [2], "FP32")
            tensor.set_data_from_numpy(np.full(2, 4, np.float32))
            out = client.infer("add_one", [tensor], client_timeout=20).as_numpy("y")
            np.testing.assert_array_equal(out, np.full(2, 5, np.float32))
            # REST too: plain HTTP to the gateway, HTTPS with the client certificate onward.
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [4, 6]}]}
            request = urllib.request.Request(
                gateway.http_url + "/v2/models/add_one/infer", data=json.dumps(body).encode()
            )
            with urllib.request.urlopen(request, timeout=20) as reply:
                assert json.loads(reply.read())["outputs"][0]["data"] == [5, 7]
