"""``ts.context``: what a TorchServe handler receives as ``context``.

One :class:`Context` per loaded model: ``initialize(context)`` reads ``manifest`` and
``system_properties``; before each ``handle(data, context)`` call the server sets the
batch's request ids and one :class:`RequestProcessor` per request (its headers, its
response status and headers), as TorchServe 0.12 does.
"""

from __future__ import annotations

import os
from typing import Any


class RequestProcessor:
    """One request of a batch: its headers (``get_request_property``) and what the handler
    sets on its response (status, headers)."""

    def __init__(self, request_header: dict[str, Any]) -> None:
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}
        self._request_header = request_header

    def get_request_property(self, key: str) -> Any:
        return self._request_header.get(key)

    def get_request_properties(self) -> dict[str, Any]:
        return self._request_header

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class _Metric:
    """A metric handlers may update; dl-inference keeps its own metrics, so this one only
    remembers its last value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: Any = None

    def add_or_update(
        self, value: Any, dimension_values: Any = None, request_id: Any = None
    ) -> None:
        self.value = value

    def update(self, value: Any, request_id: Any = None, dimensions: Any = None) -> None:
        self.value = value


class Metrics:
    """``context.metrics``: TorchServe's metric calls (``add_time``, ``add_counter``,
    ``add_size``, ``add_percent``, ``add_metric``, ``get_metric``, ...) accepted and kept
    in memory; they are not exported (dl-inference's /metrics has the server's own)."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self.request_ids: Any = None

    def get_metric(self, metric_name: str, metric_type: Any = None) -> _Metric:
        return self._metrics.setdefault(metric_name, _Metric(metric_name))

    def add_metric(self, name: str, value: Any = None, *args: Any, **kwargs: Any) -> _Metric:
        metric = self.get_metric(name)
        metric.value = value
        return metric

    add_time = add_size = add_percent = add_counter = add_error = add_metric

    def add_metric_to_cache(self, metric_name: str, *args: Any, **kwargs: Any) -> _Metric:
        return self.get_metric(metric_name)


class Context:
    """Model-level information for a handler: ``model_name``, ``manifest`` (the archive's
    MAR-INF/MANIFEST.json), ``system_properties`` (``model_dir``, ``gpu_id``,
    ``batch_size``, ``server_name``, ``server_version``, ``limit_max_image_pixels``), and
    per request of the current batch: ids, headers, response status and headers."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any],
        batch_size: int,
        gpu: int | None,
        mms_version: str,
        limit_max_image_pixels: bool = True,
        metrics: Any = None,
        model_yaml_config: Any = None,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            # What TorchServe 0.12 reports (its predecessor's name), kept for handlers
            # that test it.
            "server_name": "MMS",
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self._request_processor: list[RequestProcessor] | None = None
        self._metrics = metrics if metrics is not None else Metrics()
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.stopping_criteria = None
        # Set by the server while a streaming model's batch runs: delivers one intermediate
        # answer per request (ts.protocol.otf_message_handler); None otherwise.
        self.send_intermediate: Any = None
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def request_processor(self) -> list[RequestProcessor] | None:
        return self._request_processor

    @request_processor.setter
    def request_processor(self, request_processor: list[RequestProcessor] | None) -> None:
        self._request_processor = request_processor

    @property
    def metrics(self) -> Any:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self._metrics = metrics

    def _request(self, idx: int) -> RequestProcessor:
        if self._request_processor is None:
            raise IndexError("no request is being handled")
        return self._request_processor[idx]

    def get_request_id(self, idx: int = 0) -> str | None:
        return None if self.request_ids is None else self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self._request(idx).get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self._request(idx).get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        request = self._request(idx)
        return request.get_response_status_code(), request.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if self._request_processor is not None and self._request_processor[idx] is not None:
            self._request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for request in self._request_processor or []:
            request.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._request(idx).get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._request(idx).add_response_property(key, value)

    def get_sequence_id(self, idx: int) -> Any:
        return self._request(idx).get_request_property(self.header_key_sequence_id)
