"""The operator's status page at ``/`` and its JSON feed at ``/api/status``."""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from dl_inference.metrics import render_all_workers
from dl_inference.runtime import Runtime
from dl_inference.worker_link import WorkerLink


def status_document(runtime: Runtime, gateway: Any = None) -> dict[str, Any]:
    """Everything the page shows: server, models with recent figures, routes and nodes."""
    models = []
    for name in runtime.models.names():
        versions = runtime.models.versions(name)
        newest = versions[-1] if versions else None
        models.append(
            {
                "name": name,
                "ready": runtime.model_ready(name),
                "backend": newest.backend_name if newest else "",
                "device": getattr(newest.backend.settings, "device", "") if newest else "",
                "versions": [
                    {"version": v.version, "state": v.state.value, "reason": v.reason}
                    for v in versions
                ],
                "in_flight": sum(v.in_flight for v in versions),
                **runtime.metrics.windows[name].summary(),
            }
        )
    return {
        "server": {
            "name": runtime.server_name,
            "version": runtime.server_version,
            "ready": runtime.ready(),
            "draining": runtime.draining,
        },
        "models": models,
        "routes": gateway.snapshot() if gateway is not None else [],
    }


def status_routes(
    runtime: Runtime, gateway_of: Any, link: WorkerLink | None = None
) -> list[web.RouteDef]:
    """``/`` (HTML), ``/api/status`` (JSON) and ``/metrics`` (Prometheus text).

    Under ``--workers N`` (``link`` given), ``/metrics`` holds every worker's figures.
    """
    page = resources.files(__package__).joinpath("index.html").read_bytes()

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_document(runtime, gateway_of()))

    async def metrics(_: web.Request) -> web.Response:
        if link is None:
            body = runtime.metrics.render()
        else:
            body = await render_all_workers(runtime.metrics, link)
        return web.Response(
            body=body,
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    return [web.get("/", index), web.get("/api/status", status), web.get("/metrics", metrics)]
