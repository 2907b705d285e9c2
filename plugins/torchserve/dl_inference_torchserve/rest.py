"""TorchServe's inference REST API: ``/predictions/{model}[/{version}]``,
``/explanations/{model}[/{version}]`` (the handler sees the ``explain: True`` header) and
``/ping``.

Answers are TorchServe 0.12's: the handler's bytes with its status and headers; errors as
``{"code": N, "type": "...Exception", "message": "..."}`` (JSON indented by 2).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import hdrs, web

from dl_inference import (
    Call,
    CallPath,
    DlInferenceError,
    InferRequest,
    ModelNotFound,
    ModelNotReady,
    ModelVersionInfo,
    RuntimeView,
    http_status,
    read_body,
)
from dl_inference_torchserve.backend import HandlerFailed
from dl_inference_torchserve.requests import BODY, HEADERS, STATUS

PLUGIN = "dl_inference_torchserve"
PROTOCOL = "torchserve"

# TorchServe's exception names by HTTP status, for errors of the server itself.
_TYPES = {
    400: "BadRequestException",
    401: "InvalidKeyException",
    403: "InvalidKeyException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
}


# The headers TorchServe 0.12 sends with every prediction.
_NO_CACHE = {
    "Pragma": "no-cache",
    "Cache-Control": "no-cache; no-store, must-revalidate, private",
    "Expires": "Thu, 01 Jan 1970 00:00:00 UTC",
}


class TorchServeError(DlInferenceError):
    """An error answered with TorchServe's own type and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class _ModelNotFound(TorchServeError, ModelNotFound):
    pass


class _ModelNotReady(TorchServeError, ModelNotReady):
    pass


def error_response(status: int, kind: str, message: str) -> web.Response:
    body = {"code": status, "type": kind, "message": message}
    return web.Response(
        body=json.dumps(body, indent=2).encode() + b"\n",
        status=status,
        content_type="application/json",
    )


def error_body(error: BaseException, message: str, status: int) -> web.Response:
    """Every failure in TorchServe's error format."""
    if isinstance(error, TorchServeError):
        return error_response(error.status, error.kind, error.message)
    if isinstance(error, HandlerFailed):
        return error_response(error.status, "InternalServerException", error.message)
    status = status or http_status(error)
    return error_response(status, _TYPES.get(status, "InternalServerException"), message)


class TorchServeRest:
    """The handlers, on the kernel's call path."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        calls = CallPath(runtime, PROTOCOL, PLUGIN)
        self.predict = calls.http_handler("POST /predictions/{model}", self._predict, error_body)
        self.explain = calls.http_handler("POST /explanations/{model}", self._explain, error_body)
        self.ping = calls.http_handler("GET /ping", self._ping, error_body, counted=False)
        self.unknown = calls.http_handler(
            "POST /predictions", self._unknown, error_body, counted=False
        )

    async def _unknown(self, request: web.Request, call: Call) -> web.Response:
        raise TorchServeError(
            404,
            "ResourceNotFoundException",
            "Requested resource is not found, please refer to API document.",
        )

    async def _ping(self, request: web.Request, call: Call) -> web.Response:
        healthy = self.runtime.ready()
        body = json.dumps({"status": "Healthy" if healthy else "Unhealthy"}, indent=2) + "\n"
        return web.Response(
            body=body.encode(), status=200 if healthy else 500, content_type="application/json"
        )

    async def _explain(self, request: web.Request, call: Call) -> web.StreamResponse:
        return await self._predict(request, call, explain=True)

    async def _predict(
        self, request: web.Request, call: Call, explain: bool = False
    ) -> web.StreamResponse:
        name = request.match_info["model"]
        version = request.match_info.get("version", "")
        call.ctx.request = InferRequest(model_name=name, inputs={})
        self.runtime.authorize(call.ctx)  # before the model lookup
        served = served_version(self.runtime, name, version)
        body = await read_body(request, call)
        # The headers a handler sees, in TorchServe's order: "explain", the request's own
        # (names as sent), the path after the version.
        headers: dict[str, str] = {"explain": "True" if explain else "False"}
        headers.update(request.headers.items())
        headers["url_path"] = request.match_info.get("tail", "")
        meta = json.dumps({"headers": headers, "id": call.ctx.request_id}).encode()
        inputs = {BODY: _one(body), HEADERS: _one(meta)}
        infer = InferRequest(model_name=name, inputs=inputs, model_version=served)
        return await self._answer(request, call, infer)

    async def _answer(
        self, request: web.Request, call: Call, infer: InferRequest
    ) -> web.StreamResponse:
        """The handler's answer; a streaming handler's intermediate answers as the chunks
        of one chunked response (its first answer's status and headers, ``ts_stream_next:
        true`` among them), the final answer the last chunk, as TorchServe 0.12 sends
        them. A failure after the first chunk ends the connection without the closing
        chunk, as TorchServe's does: the client sees a cut answer, not a complete one."""
        answers = self.runtime.infer_stream(infer, call.ctx)
        reply: web.StreamResponse | None = None
        try:
            async for response in answers:
                status, headers, body = _answer(response.outputs)
                if reply is None:
                    if headers.get("ts_stream_next") != "true":
                        # The one answer (a streaming handler's final one when it sent
                        # no intermediate answer): a plain response.
                        reply = web.Response(body=body, status=status)
                        _set_headers(reply, headers)
                        continue
                    reply = web.StreamResponse(status=status)
                    _set_headers(reply, headers)
                    reply.headers["x-request-id"] = call.ctx.request_id
                    reply.enable_chunked_encoding()
                    await reply.prepare(request)
                if body:  # an empty chunk would end the chunked body
                    await reply.write(body)
        except ConnectionError:
            if reply is None or not reply.prepared:
                raise
            return reply  # the client went away; aclose() below closed the handler's stream
        except Exception:
            if reply is None or not reply.prepared:
                raise
            # Counted by infer_stream already; end the connection without the last chunk.
            if request.transport is not None:
                request.transport.close()
            return reply
        finally:
            await answers.aclose()
        if reply is None:
            raise TorchServeError(503, "InternalServerException", "Invalid model predict output")
        if reply.prepared:
            await reply.write_eof()
        return reply


def _answer(outputs: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """One answer's status, the headers the handler set, and its bytes."""
    status = int(np.asarray(outputs[STATUS]).reshape(-1)[0])
    headers = json.loads(bytes(np.asarray(outputs[HEADERS]).reshape(-1)[0]))
    return (
        status,
        {str(k): str(v) for k, v in headers.items()},
        bytes(np.asarray(outputs[BODY]).reshape(-1)[0]),
    )


def _set_headers(reply: web.StreamResponse, headers: dict[str, str]) -> None:
    # TorchServe sends no Content-Type unless the handler set one; aiohttp labels a
    # body without one application/octet-stream (RFC 9110 8.3), a known difference.
    reply.headers.update(_NO_CACHE)
    for key, value in headers.items():
        reply.headers[key] = value


def served_version(runtime: RuntimeView, name: str, version: str) -> str:
    """The kernel version to run: the default (see :func:`default_version`) among the ready
    ones, or the one whose archive's modelVersion (for other models, version number) is
    ``version``."""
    try:
        versions = runtime.model_versions(name)
    except ModelNotFound:
        raise model_not_found(name) from None
    if not version:
        chosen = default_version(runtime, name, [v for v in versions if v.ready])
        if chosen is None or _workerless(runtime, chosen):
            raise _no_worker(f'Model "{name}"')
        return chosen.version
    for info in versions:
        if served_name(info) == version:
            if _workerless(runtime, info):
                # TorchServe 0.12's words, its stray quote included.
                raise _no_worker(f'Model "{name}" Version {version}"')
            return info.version
    raise version_not_found(name, version)


def model_not_found(name: str) -> TorchServeError:
    """TorchServe's 404 for a model it does not serve."""
    return _ModelNotFound(404, "ModelNotFoundException", f"Model not found: {name}")


def version_not_found(name: str, version: str) -> TorchServeError:
    """TorchServe's 404 for a version the model does not have."""
    return _ModelNotFound(
        404,
        "ModelVersionNotFoundException",
        f"Model version: {version} does not exist for model: {name}",
    )


def _no_worker(what: str) -> _ModelNotReady:
    return _ModelNotReady(
        503,
        "ServiceUnavailableException",
        f"{what} has no worker to serve inference request. Please use scale workers API to "
        "add workers. If this is a sequence inference, please check if it is closed, or "
        "expired; or exceeds maxSequenceJobQueueSize",
    )


def _workerless(runtime: RuntimeView, info: ModelVersionInfo) -> bool:
    """Whether the management API registered or scaled this version to 0 workers (then
    TorchServe runs none of its requests)."""
    control = runtime.management
    if control is None:
        return False
    entry = control.notes(info.name).get("versions", {}).get(served_name(info), {})
    return entry.get("min") == 0


def served_name(info: ModelVersionInfo) -> str:
    """What TorchServe clients call a version: its archive's modelVersion (another model's
    version number)."""
    return str(getattr(info.backend, "manifest_version", info.version))


def noted_default(runtime: RuntimeView, name: str) -> str:
    """The version the management API's set-default chose for ``name`` ("" for none)."""
    control = runtime.management
    return str(control.notes(name).get("default", "")) if control is not None else ""


def default_version(
    runtime: RuntimeView, name: str, versions: list[ModelVersionInfo]
) -> ModelVersionInfo | None:
    """Of ``versions``, the one ``/predictions/<model>`` runs: the one set-default chose;
    else an archive model's first (TorchServe's first registered version), another
    model's newest."""
    if not versions:
        return None
    chosen = noted_default(runtime, name)
    for info in versions:
        if chosen and served_name(info) == chosen:
            return info
    first = hasattr(versions[0].backend, "manifest_version")
    return versions[0] if first else versions[-1]


def _one(value: bytes) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = value
    return array


def http_routes(runtime: RuntimeView) -> list[web.RouteDef]:
    """``/predictions/{model}[/{version}[/{tail}]]`` and ``/explanations/{model}[/{version}]``
    (any method, as TorchServe takes them), and ``/ping``."""
    api = TorchServeRest(runtime)
    any_method: Any = hdrs.METH_ANY
    return [
        web.route(any_method, "/predictions/{model}", api.predict),
        web.route(any_method, "/predictions/{model}/{version}", api.predict),
        web.route(any_method, "/predictions/{model}/{version}/{tail:.*}", api.predict),
        web.route(any_method, "/explanations/{model}", api.explain),
        web.route(any_method, "/explanations/{model}/{version}", api.explain),
        web.route(any_method, "/predictions", api.unknown),
        web.route(any_method, "/predictions/", api.unknown),
        web.get("/ping", api.ping),
        web.post("/ping", api.ping),
    ]
