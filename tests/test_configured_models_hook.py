"""dli_configured_models: models a plugin's own configuration names, served with or without
a model repository, keeping the built-in demo models out."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from dl_inference import hookimpl
from dl_inference.cli import DEMO_REPOSITORY, with_demo_repository
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.server.composition import Server
from dl_inference.spi.errors import ConfigError
from dl_inference.testing import write_python_model
from tests.test_repository_models_hook import CONFIG, answer, constant_model


def listing_plugin(listing: Path, cache: Path) -> types.ModuleType:
    """A plugin whose configuration file ``listing`` names models (``name=value`` lines),
    each made into ``cache/<name>/1/model.py`` answering that constant."""
    module = types.ModuleType("listing")

    @hookimpl
    def dli_configured_models() -> list[tuple[str, Path]]:
        found = []
        for line in listing.read_text().split():
            name, _, value = line.partition("=")
            found.append(
                (name, write_python_model(cache, name, constant_model(int(value)), CONFIG))
            )
        return found

    module.dli_configured_models = dli_configured_models  # type: ignore[attr-defined]
    return module


def host(tmp_path: Path, listing: str) -> PluginHost:
    (tmp_path / "listing").write_text(listing)
    plugins = PluginHost(entry_points=[]).load()
    plugins.pm.register(listing_plugin(tmp_path / "listing", tmp_path / "cache"), name="listing")
    return plugins


def server(plugins: PluginHost, **config: object) -> Server:
    parsed = with_demo_repository(ServerConfig.model_validate(config), plugins)
    s = Server(parsed, plugins)
    s.prepare()
    return s


async def test_without_a_repository_the_plugins_models_are_served_and_no_demo(
    tmp_path: Path,
) -> None:
    s = server(host(tmp_path, "a=7 b=8"))
    assert s.config.model_repository is None
    assert s.models.names() == ["a", "b"]
    assert await answer(s, "a") == 7


def test_the_demo_models_when_no_plugin_offers_one(tmp_path: Path) -> None:
    s = server(host(tmp_path, ""))
    assert s.config.model_repository == DEMO_REPOSITORY
    assert "simple" in s.models.names()
    # Routes keep the demo out as before, with or without the plugin's models.
    route = {"model": "up", "nodes": [{"address": "127.0.0.1:9"}]}
    assert server(host(tmp_path, ""), routes=[route]).config.model_repository is None
    s = server(host(tmp_path, "a=7"), routes=[route])
    assert s.config.model_repository is None
    assert s.models.names() == ["a"]


async def test_beside_a_repository_a_folder_of_the_same_name_wins(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_python_model(root, "a", constant_model(1), CONFIG)
    s = server(host(tmp_path, "a=7 b=8"), model_repository=str(root))
    assert s.models.names() == ["a", "b"]
    assert await answer(s, "a") == 1
    assert await answer(s, "b") == 8


def test_overrides_apply_without_a_repository(tmp_path: Path) -> None:
    plugins = host(tmp_path, "a=7")
    s = server(plugins, models={"a": {"max_batch_size": 4}})
    assert [(x.name, x.config.max_batch_size) for x in s._scan(None, s.config.models, True)] == [
        ("a", 4)
    ]
    with pytest.raises(ConfigError, match=r"models\.other: no such model"):
        server(plugins, models={"other": {"max_batch_size": 4}})


async def test_a_rescan_without_a_repository_unloads_only_what_plugins_stop_offering(
    tmp_path: Path,
) -> None:
    s = server(host(tmp_path, "a=7 b=8"))
    await s.models.load_all()
    # A model loaded from elsewhere (as the management API loads one) is not the plugin's.
    write_python_model(tmp_path / "other", "c", constant_model(3), CONFIG)
    (c,) = scan_repository(tmp_path / "other")
    await s.models.load_model(c)
    (tmp_path / "listing").write_text("a=7")
    assert await s.models.refresh(s._scan(None, {}, False), None, folders=False)
    assert s.models.names() == ["a", "c"]
    assert await answer(s, "c") == 3
