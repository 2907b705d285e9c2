"""The operator's status page at ``/`` and its JSON feed at ``/api/status``."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from aiohttp import web

from dl_inference.kernel.metrics import merge_worker_figures, parse_exposition
from dl_inference.kernel.runtime import Runtime
from dl_inference.server.worker_link import WorkerLink


def status_document(runtime: Runtime, gateway: Any = None) -> dict[str, Any]:
    """Everything the page shows: server, models with recent figures, routes and nodes,
    and the routes' split and shadow groups with their calls."""
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
        "groups": gateway.group_rows() if gateway is not None else [],
    }


# Per model, what adds up over worker processes, and what is the slowest worker's.
_SUMMED = ("qps", "errors", "count", "in_flight")
# Per route group, the calls each worker's gateway counted.
_GROUP_SUMMED = ("requests", "errors", "dropped")
_WORST = ("p50_ms", "p99_ms")


def merge_status_documents(documents: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """One status document for ``serve --workers N`` from each worker's (None: no answer).

    Rates, errors and in-flight counts add up; latency percentiles are the slowest
    worker's (percentiles of separate windows do not combine); the server is ready when
    every worker answered ready. ``server.workers`` says how many answered.
    """
    answered = {worker: doc for worker, doc in sorted(documents.items()) if doc is not None}
    merged = copy.deepcopy(next(iter(answered.values())))
    merged["server"]["ready"] = len(answered) == len(documents) and all(
        doc["server"]["ready"] for doc in answered.values()
    )
    merged["server"]["draining"] = any(doc["server"]["draining"] for doc in answered.values())
    merged["server"]["workers"] = {"count": len(documents), "answered": sorted(answered)}
    models: dict[str, dict[str, Any]] = {}
    for doc in answered.values():
        for model in doc["models"]:
            into = models.get(model["name"])
            if into is None:
                models[model["name"]] = dict(model)
                continue
            into["ready"] = into["ready"] and model["ready"]
            for key in _SUMMED:
                into[key] = (into.get(key) or 0) + (model.get(key) or 0)
            for key in _WORST:
                values = [v for v in (into.get(key), model.get(key)) if v is not None]
                into[key] = max(values) if values else None
    for model in models.values():
        model["qps"] = round(model.get("qps") or 0.0, 2)
    merged["models"] = list(models.values())
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in answered.values():
        for group in doc.get("groups", ()):
            key = (group["model"], group["group"])
            if key not in groups:
                groups[key] = dict(group)
                continue
            for name in _GROUP_SUMMED:
                if name in group:
                    groups[key][name] = groups[key].get(name, 0) + group[name]
    merged["groups"] = list(groups.values())
    return merged


def status_routes(
    runtime: Runtime, gateway_of: Any, link: WorkerLink | None = None
) -> list[web.RouteDef]:
    """``/`` (HTML), ``/api/status`` (JSON) and ``/metrics`` (Prometheus text).

    Under ``--workers N`` (``link`` given), both feeds hold every worker's figures.
    """
    page = resources.files(__package__).joinpath("index.html").read_bytes()

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def status(_: web.Request) -> web.Response:
        document = status_document(runtime, gateway_of())
        if link is None:
            return web.json_response(document)
        documents = await link.gather("/status", document, json.loads)
        return web.json_response(merge_status_documents(documents))

    return [web.get("/", index), web.get("/api/status", status), metrics_route(runtime, link)]


def metrics_route(runtime: Runtime, link: WorkerLink | None = None) -> web.RouteDef:
    """``/metrics`` (Prometheus text), on the HTTP listener and on the metrics listener;
    under ``--workers N`` (``link`` given) with every worker's figures."""

    async def metrics(_: web.Request) -> web.Response:
        if link is None:
            body = runtime.metrics.render()
        else:
            own = list(runtime.metrics.registry.collect())
            body = merge_worker_figures(await link.gather("/metrics", own, parse_exposition))
        return web.Response(
            body=body,
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    return web.get("/metrics", metrics)
