"""Compressed REST bodies: forwarded by the gateway as they came, decoded by the one reader.

The HTTP listeners keep request bodies as they came. The gateway sends a routed call's
body upstream byte for byte with its ``Content-Encoding`` (checked against an upstream
that reports what it received); a locally served call's body is decoded by the kernel's
``read_body`` for every protocol: gzip and deflate (zlib or raw) decode, a body that does
not is 400 saying why, a coding the server does not decode 415 with ``Accept-Encoding``,
and a body over the limit once decoded 413 without being inflated in full; the
management listener's bodies too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dl_inference.testing import ServerProcess, free_port, write_python_model

from .conftest import LOCAL, gateway, write_config

# An upstream node that answers every POST with what reached it: the body's hash and
# length, and its Content-Encoding.
ECHO = """
import hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        reply = json.dumps({
            "sha256": hashlib.sha256(body).hexdigest(),
            "length": len(body),
            "content_encoding": self.headers.get_all("Content-Encoding"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""
LIMIT = 1024 * 1024  # the gateway's max_message_mb: 1
V2_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.5]}]}
PLAIN = json.dumps(V2_BODY).encode()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The echo node's ``host:port``."""
    script = tmp_path_factory.mktemp("echo") / "echo.py"
    script.write_text(ECHO)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", b"", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the echo node did not start") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, echo: str) -> Iterator[ServerProcess]:
    """A gateway routing model ``echo`` to the echo node, serving ``local`` itself."""
    folder = tmp_path_factory.mktemp("compressed_gw")
    local_config = """
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]
    """
    write_python_model(folder / "models", "local", LOCAL, local_config)
    route = {
        "model": "echo",
        # The echo node speaks HTTP only: no gRPC health probes.
        "nodes": [{"address": echo, "http_address": echo}],
        "health": {"enabled": False},
    }
    config = write_config(
        folder / "gateway.yaml",
        [route],
        model_repository=str(folder / "models"),
        server={"grpc": {"max_message_mb": LIMIT // (1024 * 1024)}},
    )
    with gateway(config) as srv:
        yield srv


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON answer) of a POST sent as is (urllib compresses nothing)."""
    request = urllib.request.Request(
        server.http_url + path, data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def zeros_gzip(size: int) -> bytes:
    """gzip of ``size`` zero bytes, made a MiB at a time (a small body that inflates big)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# -- forwarded as it came ------------------------------------------------------------------

FORWARDED: dict[str, tuple[bytes, str]] = {
    "gzip": (gzip.compress(PLAIN), "gzip"),
    "deflate": (zlib.compress(PLAIN), "deflate"),
    "raw deflate": (raw_deflate(PLAIN), "deflate"),
    "plain JSON labelled gzip": (PLAIN, "gzip"),
    "corrupt gzip": (b"\x1f\x8b\x08\x00 not gzip at all", "gzip"),
    "brotli label": (b"\x0b\x02\x80hello\x03", "br"),
    "unknown coding": (PLAIN, "x-custom"),
    "a list": (gzip.compress(PLAIN), "gzip, identity"),
    "inflates past the limit": (zeros_gzip(4 * LIMIT), "gzip"),
}


@pytest.mark.parametrize("case", list(FORWARDED))
def test_routed_v2_bodies_go_upstream_as_they_came(server: ServerProcess, case: str) -> None:
    body, coding = FORWARDED[case]
    status, _, seen = post(server, "/v2/models/echo/infer", body, {"Content-Encoding": coding})
    assert status == 200, seen
    assert seen == {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
        "content_encoding": [coding],
    }


def test_a_seldon_body_is_decoded_for_its_routing_tag_and_forwarded_compressed(
    server: ServerProcess,
) -> None:
    message = {"data": {"ndarray": [1.0]}, "meta": {"tags": {"model": "echo"}}}
    for coding, compress in (("gzip", gzip.compress), ("deflate", raw_deflate)):
        body = compress(json.dumps(message).encode())
        status, _, seen = post(server, "/api/v1.0/predictions", body, {"Content-Encoding": coding})
        assert status == 200, seen
        assert seen["sha256"] == hashlib.sha256(body).hexdigest(), seen
        assert seen["content_encoding"] == [coding], seen
    # A body that does not decode is routed by its header all the same, and left to the node.
    body = b"\x1f\x8b\x08\x00 not gzip at all"
    headers = {"Content-Encoding": "gzip", "seldon-model": "echo"}
    status, _, seen = post(server, "/api/v1.0/predictions", body, headers)
    assert status == 200 and seen["sha256"] == hashlib.sha256(body).hexdigest(), seen


# -- decoded here ----------------------------------------------------------------------------

DECODED: dict[str, tuple[bytes, str]] = {
    "gzip": (gzip.compress(PLAIN), "gzip"),
    "x-gzip in capitals": (gzip.compress(PLAIN), "X-GZIP"),
    "deflate (zlib)": (zlib.compress(PLAIN), "deflate"),
    "deflate (raw)": (raw_deflate(PLAIN), "deflate"),
    "gzip data labelled deflate": (gzip.compress(PLAIN), "deflate"),
    "two gzip members": (gzip.compress(PLAIN[:9]) + gzip.compress(PLAIN[9:]), "gzip"),
    "gzip then deflate": (zlib.compress(gzip.compress(PLAIN)), "gzip, deflate"),
    "identity": (PLAIN, "identity"),
    "empty body": (b"", "gzip"),
}


@pytest.mark.parametrize("case", list(DECODED))
def test_local_bodies_are_decoded(server: ServerProcess, case: str) -> None:
    body, coding = DECODED[case]
    status, _, answer = post(server, "/v2/models/local/infer", body, {"Content-Encoding": coding})
    if not body:
        # Nothing to decode: V2 says what the (empty) request lacks, not that it is not gzip.
        assert status == 400 and "not gzip" not in answer["error"], answer
        return
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [2.0, 3.5], answer


UNREADABLE: dict[str, tuple[bytes, str, str]] = {
    "plain JSON labelled gzip": (PLAIN, "gzip", "is not gzip data"),
    "truncated": (gzip.compress(PLAIN)[:-12], "gzip", "truncated"),
    "trailing bytes": (gzip.compress(PLAIN) + b"junk", "gzip", "4 bytes follow the end"),
    "corrupt deflate": (b"x\x9c" + b"\xff" * 20, "deflate", "corrupt"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_bodies_that_do_not_decode_are_400_saying_why(server: ServerProcess, case: str) -> None:
    body, coding, why = UNREADABLE[case]
    status, headers, answer = post(
        server, "/v2/models/local/infer", body, {"Content-Encoding": coding}
    )
    assert status == 400 and headers["Content-Type"].startswith("application/json"), answer
    assert f"labelled Content-Encoding: {coding}" in answer["error"], answer
    assert why in answer["error"], answer


# Every protocol's local handler reads through the same reader: V2, TF Serving, Seldon.
PATHS = {
    "v2": ("/v2/models/local/infer", PLAIN),
    "tfserving": ("/v1/models/local:predict", json.dumps({"inputs": {"x": [1.0]}}).encode()),
    "seldon": ("/api/v1.0/predictions", json.dumps({"data": {"ndarray": [1.0]}}).encode()),
}


def error_text(answer: Any) -> str:
    """The message of a V2 / TF Serving error (``{"error": ...}``) or a Seldon one."""
    return answer["error"] if "error" in answer else answer["status"]["info"]


@pytest.mark.parametrize("protocol", list(PATHS))
@pytest.mark.parametrize("coding", ["br", "zstd", "compress, gzip"])
def test_codings_not_decoded_here_are_415(
    server: ServerProcess, protocol: str, coding: str
) -> None:
    path, body = PATHS[protocol]
    status, headers, answer = post(server, path, body, {"Content-Encoding": coding})
    assert status == 415, answer
    assert headers["Accept-Encoding"] == "gzip, deflate"
    assert f"Content-Encoding {coding!r} is not one this server decodes" in error_text(answer)


@pytest.mark.parametrize("protocol", list(PATHS))
def test_every_protocol_reads_compressed_bodies(server: ServerProcess, protocol: str) -> None:
    path, body = PATHS[protocol]
    status, _, answer = post(server, path, gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 200, answer


def test_a_body_past_the_limit_once_decoded_is_413_and_never_inflated_whole(
    server: ServerProcess,
) -> None:
    # Warm up, then note the peak: 256 MiB of zeros arrive as about 256 KiB of gzip.
    assert post(server, "/v2/models/local/infer", PLAIN, {})[0] == 200
    before = peak_rss(server)
    bomb = zeros_gzip(256 * LIMIT)
    assert len(bomb) < LIMIT
    for path in ("/v2/models/local/infer", "/v1/models/local:predict"):
        status, _, answer = post(server, path, bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "larger than this server accepts" in answer["error"], answer
    # Decoding stops a byte past the 1 MiB limit: nothing near the 256 MiB reaches memory.
    assert peak_rss(server) - before < 64 * 1024 * 1024
    # One byte within the limit still decodes (and the model refuses what it is, not its size).
    status, _, answer = post(
        server, "/v2/models/local/infer", zeros_gzip(LIMIT), {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "larger than" not in answer["error"], answer


# -- the management listener shares the reader ------------------------------------------------

TOKEN = "compressed-test-token"


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The management HTTP address of a worker serving ``local``."""
    folder = tmp_path_factory.mktemp("compressed_mgmt")
    write_python_model(folder / "models", "local", LOCAL)
    config = folder / "server.yaml"
    config.write_text(
        f"model_repository: {folder / 'models'}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
    )
    with ServerProcess(["-c", str(config)], env={"DLI_MANAGEMENT_TOKEN": TOKEN}) as srv:
        match = re.search(r"^Management HTTP listening on (\S+)$", srv.output(), re.M)
        assert match, srv.output()
        yield match.group(1)


def test_management_bodies_are_decoded_by_the_same_reader(managed: str) -> None:
    def index(body: bytes, coding: str) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            f"http://{managed}/v2/repository/index",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Encoding": coding},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())

    status, _, answer = index(gzip.compress(b'{"ready": true}'), "gzip")
    assert status == 200 and [m["name"] for m in answer] == ["local"], answer
    status, _, answer = index(b'{"ready": true}', "gzip")
    assert status == 400 and "is not gzip data" in answer["error"], answer
    status, headers, answer = index(b"{}", "br")
    assert status == 415 and headers["Accept-Encoding"] == "gzip, deflate", answer
