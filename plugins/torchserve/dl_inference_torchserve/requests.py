"""How a TorchServe request reaches a handler, and how its answer comes back.

Between the ``torchserve`` protocol (or any other client) and the backend, a request is
two BYTES inputs, one element per request (so the kernel's dynamic batching can stack
requests): ``body``, the HTTP body as sent (after its Content-Encoding), and ``headers``,
UTF-8 JSON ``{"headers": {name: value}, "id": request id}`` (optional: no headers). The
backend turns them into the row a handler sees as TorchServe 0.12's frontend and worker
do: a multipart form's parts and a urlencoded form's fields become one entry each, any
other body the entry ``body``; values whose content type is ``application/json`` are
parsed, ``text/*`` decoded, others ``bytearray``.

The answer is four outputs, one element per request: ``body`` (BYTES), ``status``
(INT32, the handler's ``set_response_status``, default 200), ``headers`` (BYTES, JSON of
the response headers the handler set, ``content-type`` included).
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from typing import Any

BODY = "body"
HEADERS = "headers"
STATUS = "status"
# A ``headers`` key: the body is a multipart form with this boundary, whatever the headers
# say (gRPC Predictions: its input map's entries, with no content type and no headers).
FIELDS_BOUNDARY = "fields_boundary"


def form_body(values: dict[str, bytes]) -> tuple[bytes, str]:
    """``values`` as a multipart form body (parts without a content type) and its boundary."""
    while True:
        boundary = secrets.token_hex(16)
        if not any(boundary.encode() in value for value in values.values()):
            break
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in values.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def header(headers: dict[str, str], name: str) -> str:
    """A header's value whatever the case of its name ("" when absent)."""
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


def fields(
    body: bytes, headers: dict[str, str], boundary: str = ""
) -> list[tuple[str, str, bytes]]:
    """The request's fields as TorchServe's frontend makes them: (name, content type, value).
    ``boundary``: the body is a multipart form with that boundary (gRPC's input map)."""
    if boundary:
        return _multipart(body, f"multipart/form-data; boundary={boundary}")
    content_type = header(headers, "content-type")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        return _multipart(body, content_type)
    if mime == "application/x-www-form-urlencoded":
        found = []
        for pair in body.split(b"&"):
            # A key without "=" is dropped, as TorchServe's frontend does.
            if b"=" in pair:
                name, value = pair.split(b"=", 1)
                found.append((_unquote(name).decode("utf-8", "replace"), "", _unquote(value)))
        return found
    return [(BODY, content_type, body)]


def _unquote(value: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(value.replace(b"+", b" "))


def _multipart(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """A multipart/form-data body's named parts, their bytes exactly as sent."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise ValueError("the multipart/form-data Content-Type names no boundary")
    chunks = body.split(b"--" + boundary.encode("latin-1"))
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, _, value = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        value = value.removesuffix(b"\r\n")  # the CRLF is the delimiter's
        part_headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, text = line.partition(":")
            part_headers[key.strip().lower()] = text.strip()
        name = _param(part_headers.get("content-disposition", ""), "name")
        if name:
            parts.append((name, part_headers.get("content-type", ""), value))
    return parts


def _param(value: str, name: str) -> str:
    """A parameter of a header value (``boundary``, ``name``), unquoted; "" when absent."""
    for item in value.split(";")[1:]:
        key, _, text = item.strip().partition("=")
        if key.strip().lower() == name:
            return text.strip().strip('"')
    return ""


def decoded(content_type: str, value: bytes) -> Any:
    """A field as the handler sees it: JSON parsed, text decoded, else a bytearray (a value
    that does not parse stays bytes, as TorchServe forwards it)."""
    if content_type == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bytearray(value)
    if content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return bytearray(value)
    return bytearray(value)
