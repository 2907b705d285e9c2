"""Registrars handed to the ``dli_register_*`` hooks: typed, and strict about duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from dl_inference.spi.backend import Backend
from dl_inference.spi.balancer import Balancer
from dl_inference.spi.converter import Converter
from dl_inference.spi.errors import PluginError
from dl_inference.spi.protocol import Protocol

T = TypeVar("T")


class Registry(Generic[T]):
    """Named classes of one kind; rejects wrong types, nameless classes and duplicate names.

    ``add`` records which plugin registered each entry, so ``dl-inference plugins`` can
    say who provides what and a clash names both plugins.
    """

    kind: str = "entry"
    base: type

    def __init__(self) -> None:
        self._entries: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}
        self.current_plugin = "dl_inference"

    def add(self, cls: type[T]) -> type[T]:
        """Register ``cls`` under ``cls.name``; returns it so it works as a decorator."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(
                f"plugin {self.current_plugin!r}: {cls!r} is not a subclass of "
                f"dl_inference.{self.base.__name__}"
            )
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {self.current_plugin!r}: {cls.__name__} needs a non-empty `name`"
            )
        if name in self._entries:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]!r} and by "
                f"{self.current_plugin!r}; uninstall or block one of them"
            )
        self._entries[name] = cls
        self._owners[name] = self.current_plugin
        return cls

    def get(self, name: str) -> type[T] | None:
        return self._entries.get(name)

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, owner in self._owners.items() if owner == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[type[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class BackendRegistry(Registry[Backend]):
    """Where ``dli_register_backends`` adds :class:`~dl_inference.Backend` subclasses."""

    kind = "backend"
    base = Backend


class BalancerRegistry(Registry[Balancer]):
    """Where ``dli_register_balancers`` adds :class:`~dl_inference.Balancer` subclasses."""

    kind = "balancer"
    base = Balancer


class ProtocolRegistry(Registry[Protocol]):
    """Where ``dli_register_protocols`` adds :class:`~dl_inference.Protocol` subclasses."""

    kind = "protocol"
    base = Protocol


class ConverterRegistry(Registry[Converter]):
    """Where ``dli_register_converters`` adds :class:`~dl_inference.Converter` subclasses."""

    kind = "converter"
    base = Converter
