"""Plugin discovery: entry points of group ``dl_inference``, each loaded on its own.

A plugin that fails to import or to register is rolled back and reported; the server
still starts unless ``plugins.strict`` is set or something it needs is missing.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import structlog

from dl_inference.spi import hookspecs
from dl_inference.spi.errors import ConfigError, PluginError
from dl_inference.spi.hookspecs import LISTENER_KEYS
from dl_inference.spi.registry import (
    BackendRegistry,
    BalancerRegistry,
    ConverterRegistry,
    ProtocolRegistry,
    Registry,
)

log = structlog.get_logger("dl_inference.plugins")

BUILTIN = "dl_inference"

# Which distribution provides a well-known name, for "pip install ..." hints.
KNOWN_PROVIDERS: dict[str, str] = {
    "pytorch": "dl-inference-pytorch",
    "tensorflow": "dl-inference-tensorflow",
    "onnx": "dl-inference-onnx",
    "seldon": "dl-inference-seldon",
    "tfserving": "dl-inference-tfserving",
    "dynamic_weighted_round_robin": "dl-inference-balancers",
    "round_robin": "dl-inference-balancers",
    "random": "dl-inference-balancers",
    "least_request": "dl-inference-balancers",
    "peak_ewma": "dl-inference-balancers",
    "triton_python": "dl-inference-triton",
    "torchserve": "dl-inference-torchserve",
}
# Triton backend / platform names (config.pbtxt's ``backend`` / ``platform``) -> the in-repo
# distribution whose backend claims them, for install hints only: the choice itself is the
# installed backends' ``triton_platforms``.
TRITON_PROVIDERS: dict[str, str] = {"python": "dl-inference-triton"}

# The distributions of dl-inference's own repository: the kernel (its root) and each plugin
# (``plugins/<name without the prefix>``), with the in-repo plugins each one needs, which a
# package index cannot supply until they are published. tests/test_install_hints.py checks
# both against every plugins/*/pyproject.toml.
IN_REPO_PLUGINS = frozenset({*KNOWN_PROVIDERS.values(), "dl-inference-auth", "dl-inference-otel"})
IN_REPO_REQUIRES: dict[str, tuple[str, ...]] = {
    "dl-inference-seldon": ("dl-inference-tfserving",),
    "dl-inference-tensorflow": ("dl-inference-tfserving",),
    "dl-inference-pytorch": ("dl-inference-seldon",),
}
KERNEL = "dl-inference"


def install_hint(*distributions: str, upgrade: bool = False) -> str:
    """How to install (``upgrade``: upgrade) distributions, as a message tells a user.

    The kernel and the in-repo plugins (``dl-inference-<x>``, kept in ``plugins/<x>``) are
    not on a package index yet, so the command that works is ``pip install ./plugins/<x>``
    (``.`` for the kernel) from the root of a source checkout, with the in-repo plugins each
    one needs; the published names follow, ready for the day they are uploaded. Any other
    name (a third party's plugin) is a plain ``pip install <name>``.
    """
    pip = "pip install -U" if upgrade else "pip install"
    ours = [d for d in distributions if d in IN_REPO_PLUGINS or d == KERNEL]
    if not ours:
        return f"{pip} {' '.join(distributions)}"
    folders: list[str] = []

    def add(dist: str) -> None:
        for needed in IN_REPO_REQUIRES.get(dist, ()):
            add(needed)
        folder = "." if dist == KERNEL else f"./plugins/{dist.removeprefix(KERNEL + '-')}"
        if folder not in folders:
            folders.append(folder)

    for dist in ours:
        add(dist)
    others = [d for d in distributions if d not in ours]
    return (
        f"{pip} {' '.join([*folders, *others])} from the root of a dl-inference "
        f"source checkout ({pip} {' '.join(distributions)} once published)"
    )


_REGISTRATION_HOOKS = (
    ("dli_register_backends", "backends"),
    ("dli_register_balancers", "balancers"),
    ("dli_register_protocols", "protocols"),
    ("dli_register_converters", "converters"),
)


@dataclass
class PluginInfo:
    """One plugin as ``dl-inference plugins`` reports it."""

    name: str
    distribution: str
    version: str
    status: str  # loaded | failed | blocked
    error: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "registers": self.registers,
            "hooks": self.hooks,
        }


class PluginHost:
    """The plugin manager, its registries, and what became of every plugin."""

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
        strict: bool = False,
        entry_points: Iterable[md.EntryPoint] | None = None,
    ) -> None:
        self.allow = set(allow) if allow is not None else None
        self.block = set(block)
        self.strict = strict
        self._entry_points = entry_points
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backends = BackendRegistry()
        self.balancers = BalancerRegistry()
        self.protocols = ProtocolRegistry()
        self.converters = ConverterRegistry()
        self.plugins: list[PluginInfo] = []
        # What plugins' dli_configure returned: listener key -> (value, where it came from).
        self.listener_settings: dict[str, tuple[Any, str]] = {}

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> PluginHost:
        """Register the kernel's built-ins, then every allowed entry point, one by one."""
        from dl_inference import builtin as builtins

        self._add(
            BUILTIN,
            builtins,
            PluginInfo(BUILTIN, "dl-inference", _version("dl-inference"), "loaded"),
        )
        eps = self._entry_points
        if eps is None:
            eps = md.entry_points(group=hookspecs.PROJECT)
        for ep in sorted(eps, key=lambda e: e.name):
            self._load_entry_point(ep)
        return self

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else "?"
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", "loaded")
        if ep.name in self.block or (self.allow is not None and ep.name not in self.allow):
            info.status = "blocked"
            info.error = "blocked by the plugins section of the config"
            self.plugins.append(info)
            return
        try:
            module = ep.load()
            _check_contract_version(ep.name, dist, module)
        except Exception as exc:
            self._failed(info, exc)
            return
        self._add(ep.name, module, info)

    def _add(self, name: str, module: ModuleType, info: PluginInfo) -> None:
        snapshots = [(reg, reg._entries.copy(), reg._owners.copy()) for reg in self._registries()]
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
            for hook_name, kind in _REGISTRATION_HOOKS:
                registry = getattr(self, kind)
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name == name:
                        registry.current_plugin = name
                        impl.function(**{arg: registry for arg in impl.argnames})
                added = registry.by_plugin(name)
                if added:
                    info.registers[kind] = added
        except Exception as exc:
            for registry, entries, owners in snapshots:
                registry._entries, registry._owners = entries, owners
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            if name == BUILTIN:
                raise
            self._failed(info, exc)
            return
        info.hooks = sorted(
            impl_hook
            for impl_hook in _implemented_hooks(self.pm, name)
            if not impl_hook.startswith("dli_register_")
        )
        self.plugins.append(info)

    def _failed(self, info: PluginInfo, exc: BaseException) -> None:
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}"
        self.plugins.append(info)
        log.warning(
            "plugin failed to load and was skipped",
            plugin=info.name,
            distribution=info.distribution,
            error=info.error,
            exc_info=exc,
        )
        if self.strict:
            raise PluginError(
                f"plugin {info.name!r} (pip package {info.distribution}) failed to load: "
                f"{info.error}; fix or uninstall it, or set plugins.strict: false"
            ) from exc

    def _registries(self) -> list[Registry[Any]]:
        return [self.backends, self.balancers, self.protocols, self.converters]

    # -- lookups with helpful errors -------------------------------------------------------

    def backend(self, name: str) -> type:
        """The backend class registered as ``name``, or PluginError naming what to install."""
        cls = self.backends.get(name)
        if cls is None:
            raise PluginError(self.missing_message("backend", name, self.backends.names()))
        return cls

    def triton_backend(self, names: tuple[str, ...], where: str) -> type:
        """The installed backend claiming (``triton_platforms``) the Triton backend or
        platform ``names`` that config.pbtxt ``where`` gives, or PluginError saying what
        to install (none) or to choose (several)."""
        wanted = set(names)
        found = [cls for cls in self.backends if wanted & set(cls.triton_platforms)]
        if len(found) == 1:
            return found[0]
        asked = " / ".join(repr(n) for n in names)
        if found:
            choices = ", ".join(sorted(cls.name for cls in found))
            raise PluginError(
                f"{where}: several installed backends serve Triton's {asked} ({choices}); "
                "choose one with models.<name>.backend in the server config"
            )
        package = next((TRITON_PROVIDERS[n] for n in names if n in TRITON_PROVIDERS), None)
        install = (
            f"install it: {install_hint(package)}"
            if package
            else "install a plugin whose backend claims it (Backend.triton_platforms)"
        )
        claimed = sorted({p for cls in self.backends for p in cls.triton_platforms})
        raise PluginError(
            f"{where}: no installed backend serves Triton's {asked} (installed backends "
            f"serve: {', '.join(claimed) or 'none'}); {install}"
        )

    def repository_models(self, root: Path | None) -> list[tuple[str, Path]]:
        """The models plugins offer: every plugin's ``dli_repository_models(root)`` (when
        there is a repository folder ``root``) and ``dli_configured_models()``, flattened; a
        name two plugins give is kept once (the first) and the other is logged."""
        answers = list(self.pm.hook.dli_repository_models(root=root)) if root is not None else []
        answers += self.pm.hook.dli_configured_models()
        found: dict[str, Path] = {}
        for answer in answers:
            for name, folder in answer or ():
                if name in found:
                    log.warning(
                        "model name given twice by plugins; the first kept",
                        model=name,
                        kept=str(found[name]),
                        skipped=str(folder),
                    )
                    continue
                found[name] = Path(folder)
        return sorted(found.items())

    def balancer(self, name: str) -> type:
        """The balancer class registered as ``name``, or PluginError naming what to install."""
        cls = self.balancers.get(name)
        if cls is None:
            raise PluginError(self.missing_message("balancer", name, self.balancers.names()))
        return cls

    def missing_message(self, kind: str, name: str, available: list[str]) -> str:
        package = KNOWN_PROVIDERS.get(name)
        failed = [p for p in self.plugins if p.status == "failed" and p.distribution == package]
        install = (
            f"install it: {install_hint(package)}"
            if package
            else f"install a plugin that registers {kind} {name!r}, or check the spelling"
        )
        message = (
            f"no installed plugin provides {kind} {name!r} "
            f"(available: {', '.join(available) or 'none'}); {install}"
        )
        if failed:
            message += f" (installed but failed to load: {failed[0].error})"
        return message

    def configure(
        self, settings: dict[str, dict[str, Any]], config_dir: Path | None = None
    ) -> None:
        """Hand each plugin its ``plugin_settings`` section through ``dli_configure``, with
        the folder its relative paths resolve against (the server YAML's; default: the
        working directory)."""
        folder = (config_dir or Path.cwd()).resolve()
        loaded = {info.name for info in self.plugins if info.status == "loaded"}
        unknown = sorted(set(settings) - loaded)
        if unknown:
            raise ConfigError(
                f"plugin_settings.{unknown[0]}: no loaded plugin is named {unknown[0]!r} "
                f"(loaded: {', '.join(sorted(loaded))})"
            )
        self.listener_settings = {}
        for impl in self.pm.hook.dli_configure.get_hookimpls():
            section = settings.get(impl.plugin_name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"plugin_settings.{impl.plugin_name}: give a mapping of keys")
            given = {"settings": section, "config_dir": folder}
            returned = impl.function(**{arg: given[arg] for arg in impl.argnames})
            for key, (value, where) in (returned or {}).items():
                if key not in LISTENER_KEYS:
                    raise PluginError(
                        f"plugin {impl.plugin_name}: dli_configure returned {key!r}, not a "
                        f"listener setting ({', '.join(LISTENER_KEYS)})"
                    )
                if key in self.listener_settings:
                    other = self.listener_settings[key][1]
                    raise ConfigError(f"{key}: given by {other} and by {where}; keep one")
                self.listener_settings[key] = (value, where)

    def request_hook(self, hook_name: str) -> Callable[..., Any] | None:
        """How to call a per-request hook: None when nobody implements it; the one plain
        implementation itself (pluggy's dispatch costs microseconds per request); else the
        hook caller. Called with keyword arguments; returns the first result or None."""
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if not impls:
            return None
        if len(impls) == 1 and not (impls[0].hookwrapper or impls[0].wrapper):
            function, names = impls[0].function, tuple(impls[0].argnames)

            def call(**kwargs: Any) -> Any:
                return function(**{name: kwargs[name] for name in names})

            return call
        firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))

        def call_all(**kwargs: Any) -> Any:
            result = caller(**kwargs)
            return result if firstresult else None

        return call_all

    def observer_hook(self, hook_name: str) -> Callable[..., None] | None:
        """How to call a per-request hook whose implementations only watch (``dli_on_error``).

        None when nobody implements it; else a function that calls every implementation in
        pluggy's order. One that raises is logged with its plugin's name and the others
        still run: a broken audit plugin must not change the answer a client gets.
        """
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if not impls:
            return None
        # (plugin name, function, its argument names; None: pass every keyword argument)
        steps: list[tuple[str, Callable[..., Any], tuple[str, ...] | None]]
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            # Wrappers need pluggy's own dispatch; a failure then names every candidate.
            owners = ", ".join(impl.plugin_name for impl in impls)
            steps = [(owners, lambda **kwargs: caller(**kwargs), None)]
        else:
            steps = [
                (impl.plugin_name, impl.function, tuple(impl.argnames))
                for impl in reversed(impls)  # pluggy calls the last registered first
            ]

        def call(**kwargs: Any) -> None:
            for plugin, function, names in steps:
                try:
                    if names is None:
                        function(**kwargs)
                    else:
                        function(**{name: kwargs[name] for name in names})
                except Exception as exc:
                    log.error(
                        "a plugin's hook raised; ignored",
                        hook=hook_name,
                        plugin=plugin,
                        error=f"{type(exc).__name__}: {exc}",
                        exc_info=exc,
                    )

        return call


def _implemented_hooks(pm: pluggy.PluginManager, plugin_name: str) -> list[str]:
    plugin = pm.get_plugin(plugin_name)
    return [caller.name for caller in pm.get_hookcallers(plugin) or []]


def _check_contract_version(name: str, dist: str, module: ModuleType) -> None:
    wanted = getattr(module, "DLI_HOOKSPEC_VERSION", None)
    if wanted is None:
        return
    try:
        major = int(str(wanted).split(".")[0])
    except ValueError:
        raise PluginError(
            f"plugin {name!r} declares DLI_HOOKSPEC_VERSION = {wanted!r}; expected a version "
            f"such as {hookspecs.HOOKSPEC_VERSION!r}. Report this to the maintainers of {dist}"
        ) from None
    kernel_major = int(hookspecs.HOOKSPEC_VERSION.split(".")[0])
    if major == kernel_major:
        return
    # Whichever side is older is the one to upgrade.
    if major > kernel_major:
        hint = (
            f"upgrade the kernel: {install_hint(KERNEL, upgrade=True)}; or install a "
            f"release of {dist} built for hook contract {kernel_major}.x"
        )
    else:
        hint = f"upgrade it: {install_hint(dist, upgrade=True)}"
    raise PluginError(
        f"plugin {name!r} was built for hook contract {wanted}, this kernel speaks "
        f"{hookspecs.HOOKSPEC_VERSION}; {hint}"
    )


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"
