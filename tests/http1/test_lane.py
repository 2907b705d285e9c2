"""The REST listener on each HTTP engine (``server.http.engine``): dl-inference's own
HTTP/1.1 lane for V2 infer, aiohttp for everything else and for every request the lane
does not take as plainly valid. Real servers, real clients (tritonclient.http, requests)
and raw sockets for what clients do not send on purpose: the same answers from both."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from aiohttp import web

from dl_inference.server.http1.lane import Routes
from dl_inference.spi.call_path import PLAIN_HANDLER
from dl_inference.testing import ServerProcess, write_python_model

DOUBLE = """
    from dl_inference import PythonModel

    class Double(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] * 2}
"""
LIMIT_MB = 8
INFER = b"POST /v2/models/double/infer HTTP/1.1\r\n"
AIOHTTP_SERVER = "aiohttp"  # in aiohttp's Server header; the lane sends none


@pytest.fixture(scope="module", params=["asyncio", "aiohttp"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp(f"http-{request.param}")
    write_python_model(root / "models", "double", DOUBLE)
    config = root / "server.yaml"
    config.write_text(
        f"model_repository: {root / 'models'}\n"
        f"server: {{http: {{engine: {request.param}}}, grpc: {{max_message_mb: {LIMIT_MB}}}}}\n"
    )
    with ServerProcess(["-c", str(config)], env={"DLI_HTTP_ENGINE": ""}) as process:
        process.engine = request.param  # type: ignore[attr-defined]
        yield process


def on_lane(server: ServerProcess) -> bool:
    return server.engine == "asyncio"  # type: ignore[attr-defined]


def infer_body(values: list[float]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values)], "data": values}]}
    ).encode()


def post(path: str, body: bytes, extra: str = "", *, close: bool = False) -> bytes:
    lines = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
    if close:
        lines += "Connection: close\r\n"
    return f"{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


class Raw:
    """One HTTP/1.1 connection, written and read by hand."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.pending:
            self._more()
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.pending) < length:
            self._more()
        body, self.pending = self.pending[:length], self.pending[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.pending += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[Raw]:
    connection = Raw(server.http_address)
    yield connection
    connection.close()


def outputs(body: bytes) -> list[float]:
    return json.loads(body)["outputs"][0]["data"]


def test_tritonclient_http_binary_and_json(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    item = httpclient.InferInput("x", [2, 3], "FP32")
    for binary in (True, False):
        item.set_data_from_numpy(array, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("y", binary_data=binary)
        reply = client.infer("double", [item], outputs=[wanted], request_id="r-1")
        np.testing.assert_array_equal(reply.as_numpy("y"), array * 2)
        assert reply.get_response()["id"] == "r-1"
    with pytest.raises(httpclient.InferenceServerException) as caught:
        client.infer("missing", [item])
    assert caught.value.status() == "400" or "missing" in caught.value.message()
    assert client.is_server_ready()


def test_the_lane_answers_infer_and_hands_the_rest_to_aiohttp(
    server: ServerProcess, raw: Raw
) -> None:
    raw.send(post("/v2/models/double/infer", infer_body([1, 2])))
    status, headers, body = raw.reply()
    assert status == 200 and outputs(body) == [2, 4]
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] and headers["date"]
    # Only the lane leaves out aiohttp's Server header: proof of who answered.
    assert (AIOHTTP_SERVER in headers.get("server", "")) is not on_lane(server)
    raw.send(get("/v2/health/ready"))  # not a lane route: aiohttp from here on
    status, headers, body = raw.reply()
    assert status == 200 and json.loads(body) == {"ready": True}
    assert AIOHTTP_SERVER in headers["server"]
    raw.send(post("/v2/models/double/infer", infer_body([3])))
    status, _, body = raw.reply()
    assert status == 200 and outputs(body) == [6]


def test_a_non_ascii_field_value_goes_to_aiohttp(server: ServerProcess, raw: Raw) -> None:
    raw.send(post("/v2/models/double/infer", infer_body([2]), "X-Note: caf\u00e9\r\n"))
    status, headers, body = raw.reply()
    assert status == 200 and outputs(body) == [4]
    assert AIOHTTP_SERVER in headers["server"]  # aiohttp decodes such values (UTF-8)


def test_pipelined_requests_are_answered_in_order(raw: Raw) -> None:
    raw.send(
        post("/v2/models/double/infer", infer_body([1]))
        + post("/v2/models/double/infer", infer_body([2]))
        + get("/v2/health/live")  # handed off mid-buffer
        + post("/v2/models/double/infer", infer_body([3]))
    )
    assert outputs(raw.reply()[2]) == [2]
    assert outputs(raw.reply()[2]) == [4]
    assert json.loads(raw.reply()[2]) == {"live": True}
    assert outputs(raw.reply()[2]) == [6]


def test_a_body_in_pieces_and_a_closing_client(raw: Raw) -> None:
    request = post("/v2/models/double/infer", infer_body([5, 6]), close=True)
    for start in range(0, len(request), 7):
        raw.send(request[start : start + 7])
    status, headers, body = raw.reply()
    assert status == 200 and outputs(body) == [10, 12]
    assert headers["connection"] == "close"
    assert raw.closed_by_server()


def test_client_errors_on_the_lane_are_v2_json(server: ServerProcess, raw: Raw) -> None:
    raw.send(post("/v2/models/double/infer", b'{"inputs": [}'))
    status, headers, body = raw.reply()
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    assert headers["content-type"] == "application/json; charset=utf-8"
    raw.send(post("/v2/models/nothing/infer", infer_body([1])))
    status, _, body = raw.reply()
    assert status in (400, 404) and "nothing" in json.loads(body)["error"]
    raw.send(post("/v2/models/double/infer", infer_body([1])))  # still serving
    assert outputs(raw.reply()[2]) == [2]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # What the lane leaves to aiohttp's strict parser, with aiohttp's answer.
        (INFER + b"Host: t\r\nContent-Length : 2\r\n\r\n{}", 400),
        (INFER + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (INFER + b"Host: t\nContent-Length: 2\r\n\r\n{}", 400),
        (INFER + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n", 400),
        (INFER + b"Content-Length: -1\r\n\r\n", 400),
    ],
    ids=["space-before-colon", "two-lengths", "bare-lf", "long-head", "negative-length"],
)
def test_malformed_heads_get_aiohttps_400(
    server: ServerProcess, raw: Raw, request_bytes: bytes, status: int
) -> None:
    raw.send(request_bytes)
    got, _, _ = raw.reply()
    assert got == status
    again = Raw(server.http_address)  # the server keeps serving
    again.send(post("/v2/models/double/infer", infer_body([1])))
    assert outputs(again.reply()[2]) == [2]
    again.close()


def test_chunked_and_expect_continue_bodies(raw: Raw) -> None:
    body = infer_body([7])
    chunked = (
        b"POST /v2/models/double/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    raw.send(chunked)
    status, _, reply = raw.reply()
    assert status == 200 and outputs(reply) == [14]
    raw.send(
        INFER + f"Host: t\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    status, _, _ = raw.reply()
    assert status == 100
    raw.send(body)
    status, _, reply = raw.reply()
    assert status == 200 and outputs(reply) == [14]


def test_a_body_over_the_limit_is_413(server: ServerProcess, raw: Raw) -> None:
    size = LIMIT_MB * 1024 * 1024 + 1
    raw.send(
        b"POST /v2/models/double/infer HTTP/1.1\r\nHost: t\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
        + b" " * size
    )
    status, _, body = raw.reply()
    assert status == 413 and "larger than this server accepts" in json.loads(body)["error"]


def test_gzip_both_ways(server: ServerProcess) -> None:
    values = [float(i) for i in range(600)]  # a reply over the compression threshold
    with requests.Session() as session:
        reply = session.post(
            f"http://{server.http_address}/v2/models/double/infer",
            data=gzip.compress(infer_body(values)),
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        )
        assert reply.status_code == 200
        assert reply.headers["content-encoding"] == "gzip"
        assert outputs(reply.content) == [v * 2 for v in values]
        reply = session.post(
            f"http://{server.http_address}/v2/models/double/infer",
            data=b"not gzip",
            headers={"Content-Encoding": "gzip"},
        )
        assert reply.status_code == 400 and "gzip" in reply.json()["error"]


SLOW = """
    import time
    from dl_inference import PythonModel

    class Slow(PythonModel):
        def predict(self, inputs, **parameters):
            time.sleep(float(parameters.get("sleep_s", 0)))
            return {"y": inputs["x"] * 2}
"""


def test_sigterm_finishes_a_lane_request_and_closes_idle_connections(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "slow", SLOW)
    server = ServerProcess(["--model-repository", str(tmp_path / "models")]).start()
    try:
        idle = Raw(server.http_address)
        idle.send(post("/v2/models/slow/infer", infer_body([1])))
        assert outputs(idle.reply()[2]) == [2]
        busy = Raw(server.http_address)
        body = json.loads(infer_body([4]))
        body["parameters"] = {"sleep_s": 1.5}
        busy.send(post("/v2/models/slow/infer", json.dumps(body).encode()))
        time.sleep(0.5)  # inside predict() now
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert idle.closed_by_server()
        status, headers, reply = busy.reply()
        assert status == 200 and outputs(reply) == [8]
        assert headers["connection"] == "close"  # no further request on a stopping server
        assert server.process.wait(30) == 0
        assert "draining" in server.output()
    finally:
        server.stop()


def test_a_pipelined_flood_is_read_as_it_is_answered(raw: Raw) -> None:
    """Requests written at once behind a running one, with a 5 MB one among them (over
    the 1 MiB the lane reads ahead): every answer comes back in order, as reading pauses
    and resumes — also while the large body is only partly read."""
    big = infer_body([1.0] * 1_000_000)
    flood = post("/v2/models/double/infer", infer_body([0]))
    flood += post("/v2/models/double/infer", big)
    flood += b"".join(post("/v2/models/double/infer", infer_body([i])) for i in range(1, 200))
    sender = threading.Thread(target=raw.send, args=(flood,))
    sender.start()
    assert outputs(raw.reply()[2]) == [0]
    assert len(outputs(raw.reply()[2])) == 1_000_000
    for i in range(1, 200):
        assert outputs(raw.reply()[2]) == [2 * i]
    sender.join(30)
    assert not sender.is_alive()


def test_plain_get_routes_leave_head_to_aiohttp() -> None:
    """aiohttp adds a HEAD route beside every GET one, with the same handler: a reply
    without its body is aiohttp's to write, so the lane takes only the GET."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"")

    setattr(handler, PLAIN_HANDLER, True)
    app = web.Application()
    app.router.add_get("/things/{name}", handler)
    routes = Routes(app)
    assert routes.match("GET", "/things/a") == (handler, {"name": "a"})
    assert routes.match("HEAD", "/things/a") is None
    assert routes.match("GET", "/things/a/b") is None
