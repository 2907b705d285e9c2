"""``ts.handler_utils.text_utils``: tokenizing for the text handlers, without torchtext.

``get_tokenizer("basic_english")`` and ``ngrams_iterator`` behave as torchtext documents
its functions of those names (which TorchServe's text handlers use): the basic English
normalization lower-cases the line, puts spaces around ``'``, ``.``, ``,``, ``(``, ``)``,
``!`` and ``?``, drops ``"``, turns ``<br />``, ``;``, ``:`` and runs of white space into
one space, and splits on spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

# (pattern, replacement), applied in this order: torchtext's documented normalization.
_BASIC_ENGLISH = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\'", " '  "),
        (r"\"", ""),
        (r"\.", " . "),
        (r"<br \/>", " "),
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"\!", " ! "),
        (r"\?", " ? "),
        (r"\;", " "),
        (r"\:", " "),
        (r"\s+", " "),
    )
]


def _basic_english(line: str) -> list[str]:
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        line = pattern.sub(replacement, line)
    return line.split()


def get_tokenizer(tokenizer: str | Callable[[str], list[str]] | None, language: str = "en"):
    """A function from a line of text to its tokens: ``None`` splits on white space,
    ``"basic_english"`` normalizes first (English only), a callable is returned as is."""
    if tokenizer is None:
        return str.split
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError("basic_english normalization is for English (en) only")
        return _basic_english
    raise ValueError(
        f"tokenizer {tokenizer!r} is not provided here: use None, 'basic_english' or a "
        "function of your own"
    )


def ngrams_iterator(token_list: list[str], ngrams: int) -> Iterator[str]:
    """The tokens, then every run of 2 .. ``ngrams`` consecutive tokens joined by a space
    (``["here", "we", "are"]``, 2: here, we, are, here we, we are)."""
    yield from token_list
    for n in range(2, ngrams + 1):
        for start in range(len(token_list) - n + 1):
            yield " ".join(token_list[start : start + n])
