"""API-key authentication for dl-inference: a hook plugin, and the docs' worked example.

Installing ``dl-inference-auth`` changes nothing until the server YAML configures it::

    plugin_settings:
      auth:
        keys:
          - {name: ci, env: DLI_KEY_CI, models: [mnist, "textcnn-*"]}
          - {name: ops, file: /run/secrets/ops_key, models: ["*"]}
          - {name: batch, sha256: 5e884898da28047151d0e56f8dc62927..., models: [mnist]}
        public_models: [demo]

Clients send ``authorization: Bearer <key>`` or ``x-api-key: <key>`` (gRPC metadata or
HTTP headers). A missing or unknown key is refused as UNAUTHENTICATED / 401; a known key
calling a model outside its ``models`` list as PERMISSION_DENIED / 403. The kernel asks
``dli_authorize`` about inference calls of every protocol; health, metadata, ``/metrics``
and the status page stay open.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dl_inference
from dl_inference_auth.authenticator import EXTRAS_KEY, Authenticator, presented_key
from dl_inference_auth.settings import AuthSettings, Key, KeyConfig, load_keys, parse_settings

DLI_HOOKSPEC_VERSION = "1.1"

__all__ = [
    "EXTRAS_KEY",
    "AuthSettings",
    "Authenticator",
    "Key",
    "KeyConfig",
    "build_authenticator",
    "presented_key",
]

# Set by dli_configure, once per server process; None = not configured = allow everything.
_authenticator: Authenticator | None = None


def build_authenticator(
    settings: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Authenticator | None:
    """An Authenticator from ``plugin_settings.auth``, or None when the section is empty.

    Raises ``dl_inference.ConfigError`` naming the offending key.
    """
    if not settings:
        return None
    config = parse_settings(settings)
    return Authenticator(load_keys(config, environ), config.public_models)


@dl_inference.hookimpl
def dli_configure(settings: dict[str, Any]) -> None:
    global _authenticator
    _authenticator = build_authenticator(settings)


@dl_inference.hookimpl
def dli_authorize(ctx: dl_inference.RequestContext) -> dl_inference.Decision | None:
    if _authenticator is None:
        return None
    model = ctx.request.model_name if ctx.request is not None else ""
    decision, key = _authenticator.decide(model, ctx.metadata)
    if key is not None:
        ctx.extras[EXTRAS_KEY] = key.name
    # None on success rather than Decision.allow(): other authorize hooks (quotas, audit)
    # still get their say.
    return decision
