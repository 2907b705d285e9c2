"""The public JSON body reader of REST adapters: every malformed body is InvalidInput."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from dl_inference import MAX_JSON_DEPTH, InvalidInput, read_json, utf8_bytes


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"inputs": [{"data": [1, 2.5, "x", null, true]}]}', None),
        (b"[]", []),
        (b"3", 3),
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate pair is one character
        (b'"\\ud800"', "\ud800"),  # valid JSON: refused only when it must become UTF-8
        (nested(MAX_JSON_DEPTH), None),
        (b'{"a": "' + b"[" * 1000 + b'"}', {"a": "[" * 1000}),  # brackets in strings: no depth
        (memoryview(b'{"k": [1]}'), {"k": [1]}),
        (bytearray(b"[1]"), [1]),
    ],
)
def test_valid_json_is_parsed(body: Any, value: Any) -> None:
    parsed = read_json(body)
    if value is not None:
        assert parsed == value
    else:
        assert parsed == json.loads(bytes(body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff{}", r"the request body is not UTF-8 text \(byte 0 .*\); send JSON encoded as"),
        (b'{"a": "\xc3"}', "byte 7"),
        (b"{not json", "the request body is not valid JSON: Expecting property name"),
        (b"", "not valid JSON"),
        (b"1" * 5000, "holds an integer with more than 4300 digits"),
        (nested(MAX_JSON_DEPTH + 1), f"nests arrays or objects more than {MAX_JSON_DEPTH} levels"),
        (nested(100_000), "more than 64 levels"),  # the parser's own recursion limit
        (nested(100_000, "").replace(b"]", b""), "more than 64 levels"),  # unterminated too
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "more than 64 levels"),
        (b'{"p": {"q": ' + nested(500) + b"}}", "more than 64 levels"),  # under the parser's limit
    ],
)
def test_malformed_bodies_are_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_json(body)


def test_depth_limit_what_and_hint_are_the_callers() -> None:
    assert read_json(nested(3), max_depth=3) == [[[1]]]
    with pytest.raises(InvalidInput, match=r"^the header nests arrays or objects more than 2 "):
        read_json(nested(3), what="the header", max_depth=2)
    with pytest.raises(InvalidInput, match=r"not valid JSON: .* \(try binary\)$"):
        read_json(b"{", hint=" (try binary)")
    with pytest.raises(InvalidInput, match=r"UTF-8 \(try binary\)$"):
        read_json(b"\x00\x00\x80", hint=" (try binary)")


def test_a_value_read_is_safe_to_walk_recursively() -> None:
    def depth(value: Any) -> int:
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    # Called from deep in a stack, as a handler is, the limit still leaves room to walk.
    def call_at(frames: int) -> int:
        if frames:
            return call_at(frames - 1)
        return depth(read_json(nested(MAX_JSON_DEPTH)))

    assert call_at(sys.getrecursionlimit() // 2) == MAX_JSON_DEPTH


def test_utf8_bytes_refuses_lone_surrogates() -> None:
    assert utf8_bytes("w\u00f6rld \U0001f600", "input 't'") == "w\u00f6rld \U0001f600".encode()
    for text in ("\ud800", "ab\udfff", read_json(b'"x\\udc00y"')):
        with pytest.raises(InvalidInput, match=r"^input 't': the string holds an unpaired "):
            utf8_bytes(text, "input 't'")
    with pytest.raises(InvalidInput, match=r"U\+DC00 at character 1"):
        utf8_bytes("x\udc00", "v")
