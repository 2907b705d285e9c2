"""Reading JSON request bodies safely, for every REST protocol adapter.

``json.loads`` alone lets three client mistakes escape as server errors: bytes that are
not UTF-8 (a ``UnicodeDecodeError`` only where the adapter remembered to catch it),
nesting deep enough to exhaust the interpreter's stack (``RecursionError``, in the parser
or later in whatever code walks the value), and strings holding lone surrogates such as
``"\\ud800"``, which JSON allows but UTF-8 cannot encode (``UnicodeEncodeError`` when the
adapter turns the text into tensor bytes). These helpers turn each into
:class:`~dl_inference.InvalidInput`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dl_inference.spi.errors import InvalidInput

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have.

Enough for a V2 request envelope around a tensor of :data:`~dl_inference.MAX_TENSOR_RANK`
dimensions; shallow enough that code walking the parsed value recursively, a few frames
per level, stays far from Python's recursion limit.
"""


def read_json(
    body: bytes | bytearray | memoryview,
    *,
    what: str = "the request body",
    hint: str = "",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a JSON body; :class:`~dl_inference.InvalidInput` for anything malformed.

    Refuses bytes that are not UTF-8, text that is not JSON, and values nested more than
    ``max_depth`` levels (arrays and objects), so the value returned is safe to walk
    recursively. ``what`` names the body in messages; ``hint`` is appended to the message
    for a body that is not UTF-8 or not JSON (e.g. which header a binary body needs).
    """
    data = bytes(body)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} is not UTF-8 text (byte {exc.start} cannot start or continue a UTF-8 "
            f"character); send JSON encoded as UTF-8{hint}"
        ) from None

    def too_deep() -> InvalidInput:  # made only when needed: not on every request
        return InvalidInput(
            f"{what} nests arrays or objects more than {max_depth} levels deep; send a "
            "flatter document (a tensor's data may be a flat list with its shape beside it)"
        )

    try:
        value = json.loads(text)
    except RecursionError:
        # The C parser checks its own depth and unwinds cleanly, leaving nothing half-built.
        raise too_deep() from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}{hint}") from None
    except ValueError:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits()
        # digits (4300 by default): quadratic time in the length, a denial of service.
        raise InvalidInput(
            f"{what} holds an integer with more than {sys.get_int_max_str_digits()} digits; "
            "send numbers that fit the tensor's datatype"
        ) from None
    # Opening brackets bound the depth, so most bodies skip the walk after two C scans.
    if data.count(b"[") + data.count(b"{") > max_depth and _deeper_than(value, max_depth):
        raise too_deep()
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in (list, dict) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if type(item) is dict else item:
            if type(child) is list or type(child) is dict:
                stack.append((child, depth + 1))
    return False


def utf8_bytes(text: str, what: str) -> bytes:
    """``text`` as UTF-8; :class:`~dl_inference.InvalidInput` if it holds a lone surrogate.

    JSON's ``"\\ud800"`` escapes decode to such unpaired surrogates, which no UTF-8 byte
    sequence represents. ``what`` names the value in the message (e.g. ``input 'text'``).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what}: the string holds an unpaired surrogate (U+{ord(text[exc.start]):04X} at "
            f"character {exc.start}), which is not Unicode text; escape a character outside "
            'the BMP as a surrogate pair ("\\ud83d\\ude00"), or send binary data'
        ) from None
