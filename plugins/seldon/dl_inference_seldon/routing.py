"""Which model a Seldon request is for: one rule for the worker and the gateway.

Seldon's message has no model field. The name comes from, in this order:

1. the gRPC metadata / HTTP header ``model`` (also ``seldon-model``, ``x-model-name``);
2. ``meta.tags.model`` (also ``model_name``, and the seed's ``taskid`` / ``taskId``,
   whose number names the model, e.g. a folder ``29``);
3. nothing: the worker then serves its only model, and refuses with a hint when it has
   several.

The worker applies :func:`model_from` to the parsed message. The gateway's readers
(:func:`seldon_routing_key` for gRPC, :func:`seldon_rest_routing_key` for REST) apply
the same function to tags read from the raw request, so both pick the same model. The gRPC
reader reads the serialized bytes with :mod:`dl_inference.wire`, jumping over the data
field, so tensors are never decoded; it reads them as protobuf parsing does: every
``meta`` occurrence merges into one, the last entry of a repeated tag wins, the last kind
set in a ``Value`` wins, fields of an unknown number or wire type are skipped, and a map
entry holding such a field is no entry at all (Python's protobuf keeps it aside as an
unknown field of ``Meta``, so the worker never sees that tag).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

from dl_inference import wire

METADATA_KEYS = ("model", "seldon-model", "x-model-name")
TAG_KEYS = ("model", "model_name", "taskid", "taskId")
# Tags the protocol consumes itself; the others reach the model as parameters.
CONTROL_TAGS = frozenset({"model", "model_name", "model_version", "output"})

# SeldonMessage.meta = 2; Meta.tags = 2 (map entries: key = 1, value = 2);
# google.protobuf.Value's oneof kind: null_value = 1 (enum), number_value = 2 (double),
# string_value = 3, bool_value = 4, struct_value = 5, list_value = 6.
_META, _TAGS, _KEY, _VALUE = 2, 2, 1, 2
_NULL, _NUMBER, _STRING, _BOOL, _STRUCT, _LIST = 1, 2, 3, 4, 5, 6
# The wire type each Value kind is parsed from; another wire type is an unknown field.
_KIND_WIRE_TYPES = {
    _NULL: wire.VARINT,
    _NUMBER: wire.FIXED64,
    _STRING: wire.LEN,
    _BOOL: wire.VARINT,
    _STRUCT: wire.LEN,
    _LIST: wire.LEN,
}


def tag_text(value: Any) -> str | None:
    """A tag's value as a model name: strings as they are, whole numbers without ``.0``.

    Other values (booleans, lists, objects, NaN and infinities) name no model.
    """
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
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
    """The gateway's gRPC reader: the model from metadata or the serialized ``meta.tags``."""
    if name := model_from(metadata, {}):
        return name  # the body is not read at all
    try:
        return model_from({}, _wire_tags(memoryview(data)))
    except (wire.WireError, UnicodeDecodeError, struct.error):
        return None  # served where it arrived, whose parser says what is wrong


def seldon_rest_routing_key(body: bytes, headers: Mapping[str, str]) -> str | None:
    """The gateway's REST reader: the model from a header or the JSON body's ``meta.tags``.

    With a header the body is not parsed. JSON numbers are read as doubles, as protobuf's
    ``Value.number_value`` holds them on the worker, so a large task id names the same model.
    """
    if name := model_from(headers, {}):
        return name
    try:
        message = json.loads(body, parse_int=float)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # served where it arrived, whose handler explains what is wrong
    meta = message.get("meta") if isinstance(message, dict) else None
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return model_from({}, tags) if isinstance(tags, dict) else None


def _wire_tags(view: memoryview) -> dict[str, Any]:
    """The routing tags of a serialized SeldonMessage, as protobuf parsing would read them."""
    tags: dict[str, Any] = {}
    for field, wire_type, start, end in wire.iter_fields(view):
        if field != _META or wire_type != wire.LEN:
            continue  # the data (field 3..7) is jumped over, never parsed
        meta = view[start:end]
        for tag_field, tag_type, entry_start, entry_end in wire.iter_fields(meta):
            if tag_field != _TAGS or tag_type != wire.LEN:
                continue
            found = _entry(meta[entry_start:entry_end])
            if found is not None and found[0] in TAG_KEYS:
                tags[found[0]] = found[1]  # a later entry replaces the value, even by a non-name
    return tags


def _entry(entry: memoryview) -> tuple[str, Any] | None:
    """A map entry's (key, value), or None for an entry protobuf would not insert.

    A repeated key takes the last; a repeated value merges, as protobuf does.
    """
    key = ""
    value: Any = None
    for number, wire_type, start, end in wire.iter_fields(entry):
        if number == _KEY and wire_type == wire.LEN:
            key = bytes(entry[start:end]).decode("utf-8")
        elif number == _VALUE and wire_type == wire.LEN:
            value = _value(entry[start:end], value)
        else:
            return None  # an unknown field: the whole entry stays unknown to the worker
    return key, value


def _value(data: memoryview, value: Any) -> Any:
    """``value`` merged with a serialized ``google.protobuf.Value``: the last kind set wins.

    Only a string or a number can name a model; the other kinds read as ``None``.
    """
    for number, wire_type, start, end in wire.iter_fields(data):
        if _KIND_WIRE_TYPES.get(number) != wire_type:
            continue  # an unknown field: protobuf keeps it aside, the kind is unchanged
        if number == _STRING:
            value = bytes(data[start:end]).decode("utf-8")
        elif number == _NUMBER:
            value = struct.unpack("<d", data[start:end])[0]
        else:
            value = None
    return value
