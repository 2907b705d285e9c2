"""Streaming answers (``ts.protocol.otf_message_handler.send_intermediate_predict_response``)
end to end: REST chunked transfer, gRPC ``StreamPredictions`` (and ``Predictions``'s first
answer), a failure after some answers, a client that leaves, and a V2 client's stream.
The same exchanges are compared with the real TorchServe 0.12 by
tests/reference/test_torchserve_streams.py."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from _ts_archives import write_mar
from dl_inference_torchserve._proto import torchserve_pb2 as pb

from dl_inference.testing import ServerProcess

STREAMER = """
    import os
    import time

    from ts.protocol.otf_message_handler import send_intermediate_predict_response


    def handle(data, context):
        if data is None:
            return None
        text = (data[0].get("body") or data[0].get("data")).decode()
        count = int(text.split()[0])
        for i in range(count):
            if "slow" in text:
                time.sleep(0.2)
            try:
                send_intermediate_predict_response(
                    [f"part-{i};" for _ in data], context.request_ids, "ok", 200, context
                )
            except Exception as exc:
                with open(os.environ["STREAM_MARK"], "w") as mark:
                    mark.write(f"{type(exc).__name__} at {i}")
                raise
        if "fail" in text:
            raise ValueError("after the parts")
        context.set_response_content_type(0, "application/json")
        return [{"parts": count} for _ in data]
"""

PLAIN = """
    def handle(data, context):
        return None if data is None else [{"plain": True} for _ in data]
"""

SERVICE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    work = tmp_path_factory.mktemp("torchserve-stream")
    store = work / "store"
    write_mar(store, "streamer", {"streamer.py": STREAMER}, "streamer.py")
    write_mar(store, "plain", {"plain.py": PLAIN}, "plain.py")
    env = {"DLI_TORCHSERVE_CACHE": str(work / "cache"), "STREAM_MARK": str(work / "mark")}
    with ServerProcess(["--model-repository", str(store)], env=env) as running:
        running.mark = work / "mark"  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while True:
            try:
                if chunks(running, "plain", b"x")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.2)
        yield running


def raw(server: ServerProcess, model: str, body: bytes) -> bytes:
    """The bytes of the HTTP answer as sent, chunk framing included (until the end or a
    cut connection)."""
    address = urlparse(server.http_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = f"POST /predictions/{model} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
        sock.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while True:
            try:
                got = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not got:
                return data
            data += got


def chunks(server: ServerProcess, model: str, body: bytes) -> tuple[int, dict, list[bytes]]:
    """Status, headers and the body's chunks as the client reads them."""
    address = urlparse(server.http_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.request("POST", f"/predictions/{model}", body)
    reply = connection.getresponse()
    headers = {k.lower(): v for k, v in reply.getheaders()}
    if headers.get("transfer-encoding") != "chunked":
        return reply.status, headers, [reply.read()]
    found = []
    while True:  # the chunked framing, read by hand to see each chunk
        size = int(reply.fp.readline().split(b";")[0], 16)
        if size == 0:
            break
        found.append(reply.fp.read(size))
        reply.fp.readline()
    return reply.status, headers, found


def test_rest_intermediate_answers_are_chunks(server: ServerProcess) -> None:
    status, headers, found = chunks(server, "streamer", b"3")
    assert status == 200 and headers["ts_stream_next"] == "true"
    assert headers["cache-control"] == "no-cache; no-store, must-revalidate, private"
    assert found == [b"part-0;", b"part-1;", b"part-2;", b'{\n  "parts": 3\n}']
    # No intermediate answer: one plain answer, its own headers.
    status, headers, found = chunks(server, "streamer", b"0")
    assert (status, found) == (200, [b'{\n  "parts": 0\n}'])
    assert "ts_stream_next" not in headers and headers["content-type"] == "application/json"
    assert chunks(server, "plain", b"x")[2] == [b'{\n  "plain": true\n}']


def test_rest_failure_after_chunks_cuts_the_answer(server: ServerProcess) -> None:
    data = raw(server, "streamer", b"2 fail")
    assert b"7\r\npart-0;\r\n7\r\npart-1;\r\n" in data
    assert not data.endswith(b"0\r\n\r\n")  # no closing chunk: the client sees it cut
    # Before any chunk, an error is TorchServe's JSON error.
    status, _, found = chunks(server, "streamer", b"0 fail")
    assert status == 503 and json.loads(found[0])["message"] == "Prediction failed"
    assert chunks(server, "streamer", b"1")[2] == [b"part-0;", b'{\n  "parts": 1\n}']


def stub(channel: grpc.Channel, method: str, streaming: bool):
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(
        SERVICE + method,
        request_serializer=pb.PredictionsRequest.SerializeToString,
        response_deserializer=pb.PredictionResponse.FromString,
    )


def test_grpc_stream_predictions(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stream = stub(channel, "StreamPredictions", True)
        request = pb.PredictionsRequest(model_name="streamer", input={"data": b"3"})
        answers = [m.prediction for m in stream(request, timeout=30)]
        assert answers == [b"part-0;", b"part-1;", b"part-2;", b'{\n  "parts": 3\n}']
        plain = pb.PredictionsRequest(model_name="plain", input={"data": b"x"})
        assert [m.prediction for m in stream(plain, timeout=30)] == [b'{\n  "plain": true\n}']
        got = []
        with pytest.raises(grpc.RpcError) as caught:
            for message in stream(
                pb.PredictionsRequest(model_name="streamer", input={"data": b"2 fail"}), timeout=30
            ):
                got.append(message.prediction)
        assert got == [b"part-0;", b"part-1;"]
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == (
            "Prediction failed\norg.pytorch.serve.http.InternalServerException"
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(pb.PredictionsRequest(model_name="nope", input={"d": b"1"}), timeout=30))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # Predictions answers a streaming handler's first answer, as TorchServe 0.12.
        unary = stub(channel, "Predictions", False)
        assert unary(request, timeout=30).prediction == b"part-0;"
        bidi = channel.stream_stream(SERVICE + "StreamPredictions2")
        with pytest.raises(grpc.RpcError) as caught:
            list(bidi(iter([request.SerializeToString()]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_client_that_leaves_stops_the_handler(server: ServerProcess) -> None:
    mark: Path = server.mark  # type: ignore[attr-defined]
    with grpc.insecure_channel(server.grpc_address) as channel:
        stream = stub(channel, "StreamPredictions", True)
        answers = stream(
            pb.PredictionsRequest(model_name="streamer", input={"data": b"50 slow"}), timeout=30
        )
        assert next(answers).prediction == b"part-0;"
        answers.cancel()
    deadline = time.monotonic() + 20
    while not mark.exists():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    stopped = mark.read_text()
    assert stopped.startswith("StreamClosed at") and int(stopped.split()[-1]) < 10
    os.unlink(mark)
    assert chunks(server, "streamer", b"1")[0] == 200  # the model serves on


def test_a_v2_client_streams_a_streaming_archive(server: ServerProcess) -> None:
    meta = json.dumps({"headers": {}, "id": "v2"})
    body = json.dumps({"body": "2", "headers": meta}).encode()
    address = urlparse(server.http_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.request("POST", "/v2/models/streamer/generate_stream", body)
    events = [
        json.loads(line[len(b"data: ") :])
        for line in connection.getresponse().read().splitlines()
        if line.startswith(b"data: ")
    ]
    assert [e["body"] for e in events] == ["part-0;", "part-1;", '{\n  "parts": 2\n}']
