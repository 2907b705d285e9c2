"""Every error the HTTP listeners answer is JSON, paths that match no route included.

aiohttp answers a path no route matches with a ``text/plain`` "404: Not Found" (and a
known path under another method with "405: Method Not Allowed"); clients of the REST
protocols (tritonclient, TF Serving's) decode an error body as JSON and failed on those.
This middleware answers them as ``{"error": "..."}``, with the same status (and a 405's
``Allow`` header). Routes answer their own errors through the call path, in their
protocol's format; what they return passes unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's own plain-text refusals (no such route, wrong method) into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        reply = web.json_response({"error": _message(request, exc)}, status=exc.status)
        if "Allow" in exc.headers:
            reply.headers["Allow"] = exc.headers["Allow"]
        return reply


def _message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.text and exc.text != f"{exc.status}: {exc.reason}":
        return exc.text  # a handler's own words
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"Method Not Allowed: {request.path} takes {allowed}, not {request.method}"
    if isinstance(exc, web.HTTPNotFound):
        return f"Not Found: no endpoint at {request.path}"
    return exc.reason
