"""Which model folders the management API may load: only plain names inside configured roots."""

from __future__ import annotations

import re
from pathlib import Path

from dl_inference.spi.errors import InvalidInput, ModelNotFound, PermissionDenied

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> None:
    """InvalidInput unless ``name`` is one plain folder-like name."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"model name {name!r} is not allowed: use one folder name of letters, digits, "
            "'_', '.' and '-' (no paths)"
        )


def check_inside_roots(folder: Path, roots: list[Path], what: str) -> Path:
    """``folder`` resolved; PermissionDenied if it or a link inside it leaves every root."""
    real = folder.resolve()
    for root in roots:
        real_root = root.resolve()
        if real_root in real.parents:
            for inner in real.rglob("*"):
                if inner.is_symlink() and real_root not in inner.resolve().parents:
                    raise PermissionDenied(
                        f"{what} holds a link that leaves the repository root: "
                        f"{inner.relative_to(real)}"
                    )
            return real
    raise PermissionDenied(
        f"{what} resolves outside the repository roots ({', '.join(map(str, roots))}); "
        "only folders inside the configured roots can be loaded"
    )


def resolve_model_folder(name: str, roots: list[Path]) -> tuple[Path, Path]:
    """(root, folder) for model ``name``; refuses names or links that would leave the roots.

    A name is one path component of letters, digits, ``_``, ``.`` and ``-`` (no ``..``,
    no separators, not absolute). The folder, with every symlink resolved, must still lie
    inside its root: a link that points elsewhere is refused (the TorchServe "ShellTorch"
    and Triton model-load incidents loaded models from wherever the caller pointed).
    """
    check_model_name(name)
    for root in roots:
        folder = root / name
        if not folder.exists():
            continue
        real_root = root.resolve()
        if real_root not in folder.resolve().parents:
            raise PermissionDenied(
                f"model {name!r} resolves outside the repository root {root} (a symlink?); "
                "only folders inside the configured roots can be loaded"
            )
        check_inside_roots(folder, [root], f"model {name!r}")
        return root, folder
    raise ModelNotFound(
        f"no model folder {name!r} in the repository roots ({', '.join(map(str, roots))})"
    )
