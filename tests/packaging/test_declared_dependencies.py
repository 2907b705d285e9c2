"""Every distribution declares what its code imports.

A module a plugin imports but does not declare works in the dev venv (the kernel or
another plugin brought it along) and breaks the day that other distribution drops it.
Each ``pyproject.toml`` (the kernel's and every ``plugins/*``) must list, in
``dependencies`` or an extra, the distribution of every third-party module its packages
import (read with ``ast``, ``TYPE_CHECKING`` blocks included; the standard library and the
distribution's own modules aside). Which distribution provides a module is asked of the
dev venv (``importlib.metadata.packages_distributions``).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]
# Folders of a distribution that are not what it installs.
NOT_SHIPPED = {"tests", "build", "dist", ".venv", ".reference", "examples", "bench", "proto"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: dict) -> set[str]:
    """Distribution names in ``dependencies`` and every extra."""
    project = pyproject["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {normalize(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def shipped_files(folder: Path, pyproject: dict) -> tuple[set[str], list[Path]]:
    """The top-level names the distribution installs, and their Python files."""
    setuptools = pyproject.get("tool", {}).get("setuptools", {})
    packages = setuptools.get("packages", {})
    if isinstance(packages, list):  # packages = ["name"]
        base, patterns = folder, packages
    else:  # [tool.setuptools.packages.find]
        find = packages.get("find", {})
        base, patterns = folder / find.get("where", ["."])[0], find.get("include", ["*"])
    modules = set(setuptools.get("py-modules", []))
    files: list[Path] = []
    for path in base.rglob("*.py"):
        top = path.relative_to(base).parts[0]
        if top in NOT_SHIPPED or top.endswith(".egg-info") or top.startswith("."):
            continue
        if path.parent == base:
            if path.stem in modules:
                files.append(path)
        elif any(fnmatch.fnmatch(top, pattern) for pattern in patterns):
            files.append(path)
    return {f.relative_to(base).parts[0].removesuffix(".py") for f in files}, files


def imported(files: list[Path]) -> set[str]:
    """Top-level names of the modules ``files`` import (absolute imports only)."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", DISTRIBUTIONS, ids=lambda p: p.name if p != ROOT else "kernel")
def test_every_imported_module_is_declared(folder: Path) -> None:
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
    own = normalize(pyproject["project"]["name"])
    local, files = shipped_files(folder, pyproject)
    assert files, f"{folder}: no shipped Python files found"
    providers = md.packages_distributions()
    wanted = declared(pyproject)
    missing = {}
    for module in sorted(imported(files) - set(sys.stdlib_module_names) - local):
        dists = {normalize(d) for d in providers.get(module, [])}
        if not dists or own in dists:
            continue  # not installed here (an optional import) or the distribution's own
        if not dists & wanted:
            missing[module] = sorted(dists)
    assert not missing, (
        f"{folder.name}/pyproject.toml: imported but not declared (module: distributions): "
        f"{missing}; add them to dependencies (or an extra, for an optional import)"
    )
