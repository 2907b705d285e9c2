"""Every message that tells a user to install one of our plugins gives a command that works.

Nothing is published on a package index yet, so the command must be ``pip install
./plugins/<x>`` from the root of a source checkout, naming every in-repo plugin the one
asked for depends on (pip cannot fetch those either); the published name follows. The
checks read the real ``plugins/*/pyproject.toml`` files, so a renamed folder, a renamed
distribution or a new in-repo dependency fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dl_inference.bench.command import find_protocol
from dl_inference.gateway import Gateway, RouteConfig
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import (
    IN_REPO_PLUGINS,
    IN_REPO_REQUIRES,
    KERNEL,
    KNOWN_PROVIDERS,
    PluginHost,
    install_hint,
)
from dl_inference.kernel.repository import scan_repository
from dl_inference.spi.errors import ConfigError, PluginError
from dl_inference.testing import write_python_model

REPO = Path(__file__).resolve().parents[1]
COMMAND = re.compile(
    r"pip install (?:-U )?(?P<paths>(?:(?:\./plugins/\S+|\.) )+)from the root of a "
    r"dl-inference source checkout \(pip install (?:-U )?(?P<names>[^()]+) once published\)"
)


def project(folder: Path) -> dict:
    with open(folder / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def in_repo_needs(dist: str) -> set[str]:
    """The plugin distributions of ours that ``dist`` depends on (not the kernel)."""
    (folder,) = (p.parent for p in REPO.glob("plugins/*/pyproject.toml") if name_of(p) == dist)
    return {
        needed
        for requirement in project(folder).get("dependencies", [])
        if (needed := re.split(r"[<>=!~;\[ ]", requirement)[0]).startswith("dl-inference-")
    }


def name_of(pyproject: Path) -> str:
    return project(pyproject.parent)["name"]


def assert_works_from_a_checkout(message: str) -> None:
    """The message's install command names existing plugin folders, holding the plugins it
    names and every in-repo plugin they need, in an order pip can install them."""
    found = COMMAND.search(message)
    assert found, f"no source-checkout install command in: {message}"
    installed: list[str] = []
    for path in found["paths"].split():
        folder = REPO / path
        assert (folder / "pyproject.toml").is_file(), f"{path} is no distribution: {message}"
        dist = name_of(folder / "pyproject.toml")
        needs = set() if dist == KERNEL else in_repo_needs(dist)
        assert needs <= set(installed), f"{dist} needs more first: {message}"
        installed.append(dist)
    assert set(found["names"].split()) <= set(installed), message
    assert "dl-inference-" not in message.replace(found[0], ""), message


def test_the_in_repo_requirements_match_the_pyproject_files() -> None:
    declared = {
        name_of(p): in_repo_needs(name_of(p)) for p in REPO.glob("plugins/*/pyproject.toml")
    }
    assert {dist: set(needs) for dist, needs in IN_REPO_REQUIRES.items()} == {
        dist: needs for dist, needs in declared.items() if needs
    }


def test_the_in_repo_plugins_are_the_plugins_folders() -> None:
    assert {name_of(p) for p in REPO.glob("plugins/*/pyproject.toml")} == IN_REPO_PLUGINS
    assert set(KNOWN_PROVIDERS.values()) <= IN_REPO_PLUGINS


@pytest.mark.parametrize("dist", sorted(IN_REPO_PLUGINS))
def test_each_plugin_hint_works_from_a_checkout(dist: str) -> None:
    assert_works_from_a_checkout(f"install it: {install_hint(dist)}")
    assert_works_from_a_checkout(f"upgrade it: {install_hint(dist, upgrade=True)}")


def test_the_kernel_upgrade_hint_works_from_a_checkout() -> None:
    hint = install_hint(KERNEL, upgrade=True)
    assert hint.startswith("pip install -U . from the root")
    assert_works_from_a_checkout(hint)


def test_a_hint_for_several_plugins_installs_each_once() -> None:
    hint = install_hint("dl-inference-pytorch", "dl-inference-onnx")
    assert_works_from_a_checkout(hint)
    assert hint.count("./plugins/seldon") == 1 and hint.count("./plugins/tfserving") == 1


def test_a_name_not_ours_is_a_plain_pip_install() -> None:
    assert install_hint("onnxscript") == "pip install onnxscript"
    # A third party's plugin may share our prefix: it comes from an index as usual.
    assert install_hint("dl-inference-old", upgrade=True) == "pip install -U dl-inference-old"


@pytest.mark.parametrize(
    ("kind", "name"),
    [("backend", "onnx"), ("backend", "tensorflow"), ("balancer", "peak_ewma")],
)
def test_missing_capability(kind: str, name: str) -> None:
    with pytest.raises(PluginError) as caught:
        getattr(PluginHost(entry_points=[]).load(), kind)(name)
    assert_works_from_a_checkout(str(caught.value))


def test_missing_protocol_in_a_route_and_in_bench() -> None:
    bare = PluginHost(entry_points=[]).load()
    route = RouteConfig.model_validate(
        {"model": "m", "nodes": [{"address": "h:1"}], "protocols": ["seldon"]}
    )
    with pytest.raises(ConfigError) as caught:
        Gateway([route], bare)
    assert_works_from_a_checkout(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        find_protocol("tfserving", bare)
    assert_works_from_a_checkout(str(caught.value))


def test_files_no_backend_recognises(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.pt").write_bytes(b"\0")
    with pytest.raises(ConfigError) as caught:
        ModelRegistry(PluginHost(entry_points=[]).load()).prepare(scan_repository(tmp_path))
    assert_works_from_a_checkout(str(caught.value))


def test_missing_backend_named_by_a_model(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", "x = 1\n", "backend: pytorch\n")
    with pytest.raises(PluginError) as caught:
        ModelRegistry(PluginHost(entry_points=[]).load()).prepare(scan_repository(tmp_path))
    assert_works_from_a_checkout(str(caught.value))


def test_convert_without_a_converter(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"\0")
    # In a process of its own: the command sets up logging, which must not outlive the test.
    command = [sys.executable, "-m", "dl_inference", "convert", source, tmp_path / "model.xyz"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_works_from_a_checkout(result.stderr)


DOCS = sorted(
    [REPO / "README.md", *REPO.glob("plugins/*/README.md"), *REPO.glob("docs/*.md")],
)
OURS = {name_of(p) for p in REPO.glob("plugins/*/pyproject.toml")}
PLUGIN_PATH = re.compile(r"^(?:\./)?plugins/([\w-]+)/?$")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_install_commands_in_the_docs_work_from_a_checkout(doc: Path) -> None:
    """A ``pip install`` in a README or doc installs plugins by folder, with the plugins of
    ours they need; a bare published name appears only beside the words "once published"."""
    text, where = doc.read_text(), doc.relative_to(REPO)
    for found in re.finditer(r"pip install [^`\n#()]*", text):
        words = found[0].split()[2:]
        near = text[max(0, found.start() - 80) : found.end() + 80]
        bare = sorted(set(words) & OURS)
        assert not bare or "published" in near, f"{where}: {found[0]!r} is not published"
        dists = []
        for word in words:
            if match := PLUGIN_PATH.match(word):
                folder = REPO / "plugins" / match[1]
                assert (folder / "pyproject.toml").is_file(), f"{where}: {found[0]!r}"
                dists.append(name_of(folder / "pyproject.toml"))
        for dist in dists:
            missing = in_repo_needs(dist) - set(dists)
            assert not missing, f"{where}: {found[0]!r} also needs {sorted(missing)}"
