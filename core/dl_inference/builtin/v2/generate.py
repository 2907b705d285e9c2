"""KServe / Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate``
and ``/generate_stream``.

The request is one JSON object: each key naming one of the model's inputs is that input
(a scalar or a nested list; its datatype the model's, its shape the value's, with a batch
dimension of 1 prepended when the model batches), ``parameters`` (an object) are the
request's parameters, and any other key is a parameter too, as Triton passes them. A
model that declares no inputs takes every key but ``parameters`` as an input, typed by
its JSON values (strings BYTES, integers INT64, other numbers FP64, booleans BOOL).

The answer is one JSON object: ``model_name``, ``model_version`` and each output by name,
a one-element output as its value, others as a flat list (BYTES as UTF-8 text), as
Triton answers.
``/generate`` answers with one such object (``application/json``); a decoupled model must
then yield exactly one response. ``/generate_stream`` answers ``text/event-stream``, one
server-sent event ``data: {...}`` per response as the model yields it; an error once the
stream has begun is an event ``data: {"error": "..."}`` (the status is already 200), an
error before it a JSON error with its status, as on every other endpoint.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
from aiohttp import web

from dl_inference.builtin.v2.codec import (
    array_to_json,
    json_to_array,
    model_parameters,
    output_array,
)
from dl_inference.spi.call_path import Call, RuntimeView, read_body
from dl_inference.spi.errors import InvalidInput
from dl_inference.spi.json_body import read_json
from dl_inference.spi.status import public_message
from dl_inference.spi.types import InferRequest, InferResponse, TensorSpec

EVENT_STREAM = "text/event-stream"
PARAMETERS = "parameters"
_JSON_DATATYPES = ((bool, "BOOL"), (int, "INT64"), (float, "FP64"), (str, "BYTES"))


class Generate:
    """The two generate handlers, on the V2 protocol's call path."""

    def __init__(self, runtime: RuntimeView, plugin: str) -> None:
        self.runtime = runtime
        self.plugin = plugin

    async def generate(self, request: web.Request, call: Call) -> web.Response:
        infer_request = await self._request(request, call)
        answer: InferResponse | None = None
        async with contextlib.aclosing(
            self.runtime.infer_stream(infer_request, call.ctx)
        ) as answers:
            async for response in answers:
                if answer is not None:
                    raise InvalidInput(
                        f"model {infer_request.model_name!r} answers with several responses; "
                        f"call POST /v2/models/{infer_request.model_name}/generate_stream"
                    )
                answer = response
        if answer is None:
            raise InvalidInput(f"model {infer_request.model_name!r} answered with no response")
        return web.json_response(generate_document(answer), dumps=_dumps)

    async def generate_stream(self, request: web.Request, call: Call) -> web.StreamResponse:
        infer_request = await self._request(request, call)
        answers = self.runtime.infer_stream(infer_request, call.ctx)
        reply: web.StreamResponse | None = None
        try:
            async for response in answers:
                event = b"data: " + _dumps(generate_document(response)).encode() + b"\n\n"
                if reply is None:
                    reply = web.StreamResponse(
                        headers={
                            "Content-Type": f"{EVENT_STREAM}; charset=utf-8",
                            "Cache-Control": "no-cache",
                            "x-request-id": call.ctx.request_id,
                        }
                    )
                    await reply.prepare(request)
                # A client that went away fails this write: the stream is closed below.
                await reply.write(event)
        except ConnectionError:
            if reply is None:
                raise
            return reply  # the client went away; the finally block closed the model's stream
        except Exception as exc:
            if reply is None:
                raise  # before the stream began: a JSON error with its status
            message = public_message(exc, self.plugin)
            with contextlib.suppress(ConnectionError):
                await reply.write(b"data: " + _dumps({"error": message}).encode() + b"\n\n")
        finally:
            await answers.aclose()  # the client left: the model's generator is closed
        if reply is None:
            raise InvalidInput(f"model {infer_request.model_name!r} answered with no response")
        await reply.write_eof()
        return reply

    async def _request(self, request: web.Request, call: Call) -> InferRequest:
        name = request.match_info["model"]
        version = request.match_info.get("version", "")
        call.ctx.request = InferRequest(model_name=name, model_version=version, inputs={})
        body = await read_body(request, call)
        with call.parsing("the request body"):
            document = read_json(body)
            if not isinstance(document, dict):
                raise InvalidInput(
                    "the generate request must be a JSON object: input name -> value, and "
                    f'"parameters"; got {type(document).__name__}'
                )
            self.runtime.authorize(call.ctx)  # before the model is looked up for its inputs
            model = self.runtime.resolve_model(name, version)
            batched = model.backend.config.max_batch_size > 0
            return generate_request(name, version, document, model.inputs(), batched)


def generate_request(
    model: str,
    version: str,
    document: dict[str, Any],
    specs: list[TensorSpec] | None,
    batched: bool,
) -> InferRequest:
    """The InferRequest a generate body stands for (see the module's docstring)."""
    raw_parameters = document.get(PARAMETERS, {})
    if not isinstance(raw_parameters, dict):
        raise InvalidInput(
            f'"parameters" must be a JSON object, got {type(raw_parameters).__name__}'
        )
    parameters = dict(raw_parameters)
    declared = {spec.name: spec for spec in specs or ()}
    inputs: dict[str, np.ndarray] = {}
    for key, value in document.items():
        if key == PARAMETERS:
            continue
        if declared and key not in declared:
            if isinstance(value, dict | list):
                raise InvalidInput(
                    f"{key!r} is not an input of model {model!r} (its inputs: "
                    f"{', '.join(sorted(declared))}), so it is a parameter, and a parameter is "
                    "a string, number or boolean"
                )
            parameters[key] = value
            continue
        spec = declared.get(key)
        datatype = spec.datatype if spec is not None else _json_datatype(key, value)
        shape = list(np.shape(value)) or [1]
        if batched:
            shape = [1, *shape]
        inputs[key] = json_to_array(key, datatype, shape, value)
    if not inputs:
        raise InvalidInput(
            f"the generate request names none of model {model!r}'s inputs"
            + (f" ({', '.join(sorted(declared))})" if declared else "")
        )
    return InferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        parameters=model_parameters(parameters),
    )


def generate_document(response: InferResponse) -> dict[str, Any]:
    """One generate response object: model name, version, and each output by name."""
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    for name, value in response.outputs.items():
        array, datatype = output_array(response.model_name, name, value)
        flat = array_to_json(name, array, datatype)
        # As Triton answers: one element as its value, more as a flat list.
        document[name] = flat[0] if array.size == 1 else flat
    return document


def _json_datatype(name: str, value: Any) -> str:
    first = value
    while isinstance(first, list) and first:
        first = first[0]
    for kind, datatype in _JSON_DATATYPES:
        if isinstance(first, kind):
            return datatype
    raise InvalidInput(
        f"input {name!r}: {json.dumps(value)[:80]} is not a string, number, boolean or a list "
        "of them"
    )


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))
