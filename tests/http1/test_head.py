"""What the lane's head parser takes (the plainly valid case) and what it leaves to
aiohttp's strict parser (``None``)."""

from __future__ import annotations

import pytest

from dl_inference.server.http1.head import parse_head

LINE = b"POST /v2/models/m/infer HTTP/1.1"


@pytest.mark.parametrize(
    "head",
    [
        LINE + b"\r\nHost: t\nX: 1",  # bare LF
        LINE + b"\r\nA: b\rc",  # bare CR
        LINE + b"\r\nContent-Length : 2",  # space before the colon
        LINE + b"\r\n X: 1",  # obsolete line folding
        LINE + b"\r\n: no-name",
        LINE + b"\r\nContent-Length: 2\r\nContent-Length: 2",
        LINE + b"\r\nContent-Length: -1",
        LINE + b"\r\nContent-Length: 1_0",
        LINE + b"\r\nContent-Length: \xd9\xa1",  # non-ASCII (an Arabic-Indic one)
        LINE + b"\r\nX-Note: caf\xc3\xa9",
        LINE + b"\r\nX: \x00",
        LINE + b"\r\nTransfer-Encoding: chunked",
        LINE + b"\r\nExpect: 100-continue",
        LINE + b"\r\nUpgrade: h2c\r\nConnection: Upgrade",
        LINE + b"\r\nConnection: keep-alive, Upgrade",
        b"POST /v2/models/m/infer HTTP/1.0",
        b"POST /v2/models/m%2Fx/infer HTTP/1.1",
        b"POST http://t/v2/models/m/infer HTTP/1.1",
        b"FOO /v2/models/m/infer HTTP/1.1",
        b"POST  /v2/models/m/infer HTTP/1.1",
    ],
)
def test_unusual_heads_are_left_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


def test_a_plain_head() -> None:
    head = parse_head(
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: t\r\nX-Tab:\t v \t\r\n"
        b"Content-Length: 12\r\nConnection: close"
    )
    assert head is not None
    assert (head.method, head.path, head.content_length, head.keep_alive) == (
        "POST",
        "/v2/models/m/infer",
        12,
        False,
    )
    assert head.fields == [
        ("Host", "t"),
        ("X-Tab", "v"),
        ("Content-Length", "12"),
        ("Connection", "close"),
    ]
    assert parse_head(LINE).content_length == 0  # type: ignore[union-attr]
