"""docs/gateway.md documents every key of a route, with the default the code has.

The keys come from the route configuration models themselves (``RouteConfig`` and the
sections it nests), so a field added, renamed or given another default without the
reference table following fails here; so does a row for a key that no longer exists.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from dl_inference.gateway.config import RouteConfig, Routes
from dl_inference.testing.markdown import code_block

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
README = DOC.parents[1] / "README.md"
# | `key` | type | default | meaning |
ROW = re.compile(
    r"^\| `(?P<key>[\w.\[\]]+)` \| (?P<type>[^|]+) \| (?P<default>[^|]+) \| (?P<meaning>.+) \|$"
)


def section_of(annotation: object) -> tuple[type[BaseModel], bool] | None:
    """(the section model, whether a list of it) when ``annotation`` nests one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = section_of(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        (item,) = typing.get_args(annotation)
        found = section_of(item)
        return (found[0], True) if found is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def route_keys(
    model: type[BaseModel] = RouteConfig, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """Every key a route entry may hold, dotted (``health.interval_s``, ``nodes[].weight``)."""
    for name, field in model.model_fields.items():
        key = prefix + name
        yield key, field
        nested = section_of(field.annotation)
        if nested is not None:
            section, many = nested
            yield from route_keys(section, key + ("[]." if many else "."))


def default_text(field: FieldInfo) -> str:
    """How the reference table writes a field's default."""
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def documented() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            assert match["key"] not in rows, f"{match['key']} has two rows in {DOC.name}"
            rows[match["key"]] = {k: v.strip() for k, v in match.groupdict().items()}
    return rows


def test_every_route_key_is_documented_with_its_default() -> None:
    rows = documented()
    keys = dict(route_keys())
    assert len(keys) > 30  # the walk found the nested sections
    assert sorted(set(keys) - set(rows)) == [], f"keys missing from {DOC.name}"
    assert sorted(set(rows) - set(keys)) == [], f"rows in {DOC.name} for keys that do not exist"
    for key, field in keys.items():
        row = rows[key]
        assert row["default"].strip("`") == default_text(field), (key, row["default"])
        assert row["meaning"] and row["type"], key


def test_every_route_field_has_a_description_in_the_code() -> None:
    """The table's source: each field says what it is where it is defined."""
    missing = [key for key, field in route_keys() if not field.description]
    assert missing == []


def test_the_example_is_a_valid_route_list() -> None:
    example = yaml.safe_load(code_block(DOC.read_text(), "yaml", "routes:").code)
    routes = TypeAdapter(Routes).validate_python(example["routes"])
    assert routes[0].probe_service == "textcnn"


def test_the_readme_links_the_reference() -> None:
    assert "(docs/gateway.md)" in README.read_text()


@pytest.mark.parametrize("key", ["health.service", "ejection.base_s", "nodes[].weight"])
def test_rows_are_found(key: str) -> None:
    assert key in documented()
