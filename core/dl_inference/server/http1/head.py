"""The head of an HTTP/1.1 request, parsed only when it is plainly valid.

Anything unusual yields ``None`` and the connection goes to aiohttp, whose parser
(llhttp) is the one that judges malformed requests and answers them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every field line: an RFC 9110 5.6.2 token for the name; the value visible ASCII, spaces
# and tabs (no control characters, so no bare CR or LF can hide in it). One match checks
# all lines at once.
_FIELDS = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t]*\r\n)*")
_TARGET = re.compile(r"/[!$&'()*+,\-./0-9:;=?@A-Z_a-z~]*")
# Requests with these fields go to aiohttp: bodies framed or announced otherwise, protocol
# switches, and fields this lane does not interpret.
_HAND_OFF_FIELDS = frozenset({"transfer-encoding", "expect", "upgrade", "http2-settings"})
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class RequestHead:
    """A plainly valid request head: what the lane needs to route and read the body."""

    method: str
    path: str
    fields: list[tuple[str, str]]
    content_length: int
    keep_alive: bool


def parse_head(head: bytes) -> RequestHead | None:
    """``head`` (up to, without, the blank line) parsed, or ``None`` to hand it off."""
    if not head.isascii():
        return None  # non-ASCII field values: aiohttp decodes them (UTF-8) as it always has
    text = head.decode("ascii")
    line, _, rest = text.partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or parts[0] not in METHODS:
        return None
    target = parts[1]
    if _TARGET.fullmatch(target) is None or "%" in target:
        return None  # percent-escapes: aiohttp decodes them before routing
    if rest and _FIELDS.fullmatch(rest + "\r\n") is None:
        return None
    fields = []
    length = -1
    keep_alive = True
    for field in rest.split("\r\n") if rest else ():
        name, _, value = field.partition(":")
        value = value.strip(" \t")
        lower = name.lower()
        if lower in _HAND_OFF_FIELDS:
            return None
        if lower == "content-length":
            if length >= 0 or not value.isdigit():
                return None  # repeated or not a plain number
            length = int(value)
        elif lower == "connection":
            tokens = {token.strip().lower() for token in value.split(",")}
            if "upgrade" in tokens:
                return None
            keep_alive = "close" not in tokens
        fields.append((name, value))
    return RequestHead(
        method=parts[0],
        path=target.partition("?")[0],
        fields=fields,
        content_length=max(length, 0),
        keep_alive=keep_alive,
    )
