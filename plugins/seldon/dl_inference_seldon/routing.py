"""Which model a Seldon request is for: one rule for the worker and the gateway.

Seldon's message has no model field. The name comes from, in this order:

1. the gRPC metadata / HTTP header ``model`` (also ``seldon-model``, ``x-model-name``);
2. ``meta.tags.model`` (also ``model_name``, and the seed's ``taskid`` / ``taskId``,
   whose number names the model, e.g. a folder ``29``);
3. nothing: the worker then serves its only model, and refuses with a hint when it has
   several.

The gateway reads the name from the serialized bytes with :mod:`dl_inference.wire`,
jumping over the data field, so tensors are never decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from dl_inference import wire

METADATA_KEYS = ("model", "seldon-model", "x-model-name")
TAG_KEYS = ("model", "model_name", "taskid", "taskId")
# Tags the protocol consumes itself; the others reach the model as parameters.
CONTROL_TAGS = frozenset({"model", "model_name", "model_version", "output"})

# SeldonMessage.meta = 2; Meta.tags = 2 (map entries: key = 1, value = 2);
# google.protobuf.Value: number_value = 2 (double), string_value = 3.
_META, _TAGS, _KEY, _VALUE, _NUMBER, _STRING = 2, 2, 1, 2, 2, 3


def tag_text(value: Any) -> str | None:
    """A tag's value as a model name: strings as they are, whole numbers without ``.0``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def model_from(metadata: Mapping[str, str], tags: Mapping[str, Any]) -> str | None:
    """The model a request names, by metadata first, then tags; ``None`` if it names none."""
    for key in METADATA_KEYS:
        if metadata.get(key):
            return metadata[key]
    for key in TAG_KEYS:
        if key in tags:
            text = tag_text(tags[key])
            if text:
                return text
    return None


def seldon_routing_key(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """The gateway's reader: the model name from metadata or the serialized ``meta.tags``."""
    for key in METADATA_KEYS:
        if metadata.get(key):
            return metadata[key]
    try:
        return model_from({}, _wire_tags(memoryview(data)))
    except (wire.WireError, UnicodeDecodeError, struct.error):
        return None


def _wire_tags(view: memoryview) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for field, wire_type, start, end in wire.iter_fields(view):
        if field != _META or wire_type != wire.LEN:
            continue  # the data (field 3..7) is jumped over, never parsed
        meta = view[start:end]
        for tag_field, tag_type, entry_start, entry_end in wire.iter_fields(meta):
            if tag_field != _TAGS or tag_type != wire.LEN:
                continue
            key, value = _entry(meta[entry_start:entry_end])
            if key in TAG_KEYS and value is not None:
                tags[key] = value
    return tags


def _entry(entry: memoryview) -> tuple[str | None, Any]:
    key: str | None = None
    value: Any = None
    for number, wire_type, start, end in wire.iter_fields(entry):
        if number == _KEY and wire_type == wire.LEN:
            key = bytes(entry[start:end]).decode("utf-8")
        elif number == _VALUE and wire_type == wire.LEN:
            value = _value(entry[start:end])
    return key, value


def _value(data: memoryview) -> Any:
    value: Any = None
    for number, wire_type, start, end in wire.iter_fields(data):
        if number == _STRING and wire_type == wire.LEN:
            value = bytes(data[start:end]).decode("utf-8")
        elif number == _NUMBER and wire_type == wire.FIXED64:
            value = struct.unpack("<d", data[start:end])[0]
        else:
            value = None  # a bool, list or struct never names a model
    return value
