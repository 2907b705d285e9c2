"""``ts.utils.util``: the helpers handlers commonly import from TorchServe 0.12."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

# HTML tags and character entities (``&amp;``, ``&#39;``, ``&#x27;``): what the text
# handlers remove from a line first.
CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


class PredictionException(Exception):
    """Raised by a handler to answer the batch's requests with ``error_code`` and
    ``message`` (TorchServe: HTTP ``error_code``, ``{"code", "type", "message"}``)."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes defined in ``module`` itself (not imported into it), optionally only
    the subclasses of ``parent_class``."""
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """``index_to_name.json`` as ``{"<class index>": "<label>"}``; None when the file is
    missing (logged). A list of names as a value keeps its last; the older
    ``{"object_type_names": [...]}`` form is accepted."""
    if not os.path.isfile(mapping_file_path):
        logger.warning(
            "%r is missing. Inference output will not include class name.", mapping_file_path
        )
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise Exception('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): name for index, name in enumerate(names)}
    for key, value in list(mapping.items()):
        label = value[-1] if isinstance(value, list) else value
        if not isinstance(label, str):
            raise Exception("labels in index->name mapping must be either str or List[str]")
        mapping[key] = label
    return mapping


def map_class_to_label(
    probs: list[list[Any]], mapping: dict[str, str] | None = None, lbl_classes: Any = None
) -> list[dict[str, Any]]:
    """One ``{label: probability}`` dict per row of ``probs``; ``lbl_classes`` gives each
    row's class indices (default 0..n-1), ``mapping`` their names (default the index)."""
    if not isinstance(probs, list):
        raise Exception("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise Exception("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs))
    return [
        {
            (mapping[str(label)] if mapping is not None else str(label)): prob
            for label, prob in zip(*row, strict=False)
        }
        for row in zip(lbl_classes, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    """A YAML file as a dict (``model-config.yaml``); empty for an empty file."""
    import yaml

    with open(yaml_file_path) as f:
        return yaml.safe_load(f) or {}


def deprecated(
    version: Any, replacement: str = "", klass: type[Warning] = PendingDeprecationWarning
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: warn (``klass``) when the function is called."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            hint = f"; use {replacement}" if replacement else ""
            warnings.warn(
                f"{function.__name__} is deprecated since {version}{hint}", klass, stacklevel=2
            )
            return function(*args, **kwargs)

        return call

    return wrap
