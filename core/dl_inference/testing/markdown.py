"""The fenced code blocks of a Markdown page, for tests that run its examples as written."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^(?P<marks>#{1,6}) +(?P<title>.+?) *#*$", re.MULTILINE)


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: its language tag (``""`` when none), its text, where it starts."""

    lang: str
    code: str
    start: int

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0]


def code_blocks(text: str) -> list[CodeBlock]:
    """Every fenced (`````) code block of ``text``, in order."""
    return [CodeBlock(m["lang"], m["code"], m.start()) for m in _FENCE.finditer(text)]


def code_block(text: str, lang: str, needle: str) -> CodeBlock:
    """The one ``lang`` block of ``text`` that contains ``needle`` (an error if not exactly one)."""
    found = [b for b in code_blocks(text) if b.lang == lang and needle in b.code]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {lang!r} code blocks contain {needle!r}, not one")
    return found[0]


def sections(text: str, level: int = 2) -> dict[str, str]:
    """The text under each heading of ``level`` (``##`` by default), up to the next heading of
    that level or above, by title; headings inside code blocks do not count."""
    fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    cuts = [
        (m.start(), len(m["marks"]), m["title"])
        for m in _HEADING.finditer(text)
        if len(m["marks"]) <= level and not any(a <= m.start() < b for a, b in fenced)
    ]
    found: dict[str, str] = {}
    for i, (start, marks, title) in enumerate(cuts):
        if marks == level:
            end = cuts[i + 1][0] if i + 1 < len(cuts) else len(text)
            found[title] = text[start:end]
    return found


def section(text: str, prefix: str, level: int = 2) -> str:
    """The text of the one heading of ``level`` whose title starts with ``prefix`` (a guide's
    numbered step, ``"3."``): an error unless exactly one does."""
    found = [body for title, body in sections(text, level).items() if title.startswith(prefix)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} headings start with {prefix!r}, not one")
    return found[0]


def shown_output(code: str, sep: str = " ") -> str:
    """What a block says it prints: its trailing ``# `` comment lines, joined by ``sep``
    (``"\\n"`` keeps the layout)."""
    lines = code.rstrip("\n").splitlines()
    shown: list[str] = []
    while lines and lines[-1].startswith("# "):
        shown.insert(0, lines.pop().removeprefix("# "))
    return sep.join(shown)


def run_shown(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command a page shows; its standard output (a failure shows what it printed)."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def broken_links(text: str, page: Path) -> list[str]:
    """The relative links of ``text`` (the Markdown of ``page``) that name no file, or a
    heading the file does not have (``other.md#anchor``); web links are not followed."""
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in link:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.is_file():
            broken.append(link)
        elif anchor:
            titles = [m["title"] for m in _HEADING.finditer(path.read_text())]
            if anchor not in {heading_anchor(title) for title in titles}:
                broken.append(link)
    return broken
