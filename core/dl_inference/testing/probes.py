"""What end-to-end tests ask a running server, with the clients users have: a plain GET's
status, grpc.health, a JSON POST, and waiting until one of those says what the test needs."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Call ``condition`` until it returns something true, and return that; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get_status(url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status code of GET ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def grpc_health(address: str, service: str = "") -> int | grpc.StatusCode:
    """grpc.health.v1 Check of ``service`` at ``address``: its ServingStatus, or the gRPC
    status code of a refused check (NOT_FOUND for a service the server does not know)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()
    return reply.status


def post_json(url: str, body: Any, timeout: float = 60.0) -> tuple[int, Any]:
    """POST ``body`` as JSON to ``url``: the status code and the decoded JSON answer, of an
    error answer too."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
