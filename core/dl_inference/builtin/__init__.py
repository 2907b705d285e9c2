"""The kernel's own capabilities, registered through the same hooks as any plugin."""

from __future__ import annotations

from dl_inference.spi.hookspecs import hookimpl
from dl_inference.spi.registry import BackendRegistry, ProtocolRegistry


@hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference.builtin.ensemble import EnsembleBackend
    from dl_inference.builtin.python_backend import PythonBackend

    registry.add(PythonBackend)
    registry.add(EnsembleBackend)


@hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference.builtin.v2 import V2Protocol

    registry.add(V2Protocol)
