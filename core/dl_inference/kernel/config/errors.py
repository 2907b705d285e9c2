"""Turn pydantic validation errors into lines that name the path, the fault and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


def format_location(location: Iterable[Any], prefix: str = "") -> str:
    """``("routes", 1, "nodes", 0, "weight")`` -> ``routes[1].nodes[0].weight``."""
    text = prefix
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every field name in ``model`` and the models nested in it, for 'did you mean'."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= _field_names(annotation, seen)
            stack.extend(get_args(annotation))
    return names


def describe_errors(
    error: ValidationError,
    model: type[BaseModel],
    prefix: str = "",
    also_known: Iterable[str] = (),
) -> list[str]:
    """One readable line per problem, e.g. ``models.mnist.max_batch_sise: unknown key (...)``.

    ``also_known`` adds names accepted elsewhere (kernel keys beside backend settings)
    to the 'did you mean' candidates.
    """
    known = sorted(_field_names(model) | set(also_known))
    lines = []
    for item in error.errors():
        location = format_location(item["loc"], prefix)
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            lines.append(f"{location}: unknown key{hint}")
        elif item["type"] == "missing":
            lines.append(f"{location}: required key is missing")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{location}: {item['msg']}{shown}")
    return lines


def unknown_key_lines(keys: Iterable[str], allowed: Iterable[str], prefix: str) -> list[str]:
    """Lines for keys no one accepts, each with the closest allowed key as a hint."""
    allowed = sorted(allowed)
    lines = []
    for key in keys:
        guess = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        lines.append(f"{format_location([key], prefix)}: unknown key{hint}")
    return lines
