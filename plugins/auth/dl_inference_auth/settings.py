"""``plugin_settings.auth`` of the server YAML: validated, then turned into key digests.

Secrets never sit in the YAML in clear: each key comes from an environment variable
(``env``), from a file (``file``, e.g. a mounted Kubernetes Secret), or is given as the
hex SHA-256 of the key (``sha256``). Only SHA-256 digests are kept in memory.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import dl_inference

PREFIX = "plugin_settings.auth"

# A key read from env/file shorter than this is a password, not an API key: refuse it so a
# guessable secret never goes live (sha256 entries cannot be checked, hence the docs).
MIN_KEY_LENGTH = 16

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyConfig(_Section):
    """One API key: a name for logs and errors, where its secret comes from, what it may call.

    Give exactly one of ``env`` (an environment variable holding the key), ``file`` (a file
    holding the key; surrounding whitespace is stripped) or ``sha256`` (hex digest of the
    key). ``models`` lists the model names the key may call; ``*`` and ``?`` glob patterns
    work (``"*"`` = every model).
    """

    name: str = Field(min_length=1)
    env: str | None = Field(default=None, min_length=1)
    file: Path | None = None
    sha256: str | None = None
    models: list[str] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value.strip()):
            raise ValueError(
                "give the 64 hex digits of the key's SHA-256, e.g. the output of "
                '`printf %s "$KEY" | sha256sum`'
            )
        return value.strip().lower() if value is not None else None

    @field_validator("models")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError('model names may not be empty; use "*" for every model')
        return value

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        given = [n for n in ("env", "file", "sha256") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of env: VARIABLE, file: PATH or sha256: HEX for the key "
                f"(got {', '.join(given) or 'none'})"
            )
        return self


class AuthSettings(_Section):
    """The whole ``plugin_settings.auth`` section.

    ``keys``: who may call what. ``public_models``: model names (or glob patterns) that
    need no key at all. Health, readiness, metadata, ``/metrics`` and the status page are
    never checked: the kernel asks ``dli_authorize`` about inference calls only.
    """

    keys: list[KeyConfig] = Field(min_length=1)
    public_models: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Key:
    """A configured key as kept in memory: its name, SHA-256 digest and allow list."""

    name: str
    digest: bytes
    models: tuple[str, ...]
    where: str  # config path of this key, for error messages


def parse_settings(settings: Mapping[str, Any]) -> AuthSettings:
    """Validate ``settings``; a ConfigError names the key (``plugin_settings.auth.keys[0]``)."""
    try:
        return AuthSettings.model_validate(dict(settings))
    except ValidationError as exc:
        raise dl_inference.ConfigError("; ".join(_describe(exc))) from None


def load_keys(config: AuthSettings, environ: Mapping[str, str] | None = None) -> list[Key]:
    """Read every key's secret (environment / file / digest) and keep only its SHA-256."""
    environ = os.environ if environ is None else environ
    keys: list[Key] = []
    names: dict[str, str] = {}
    digests: dict[bytes, str] = {}
    for index, entry in enumerate(config.keys):
        where = f"{PREFIX}.keys[{index}]"
        if entry.name in names:
            raise dl_inference.ConfigError(
                f"{where}.name: {entry.name!r} is already the name of {names[entry.name]}; "
                "give every key its own name"
            )
        digest = _digest(entry, where, environ)
        if digest in digests:
            raise dl_inference.ConfigError(
                f"{where}: the same secret as {digests[digest]}; give every key its own "
                "secret (or list more models on one key)"
            )
        names[entry.name] = where
        digests[digest] = where
        keys.append(Key(entry.name, digest, tuple(entry.models), where))
    return keys


def _digest(entry: KeyConfig, where: str, environ: Mapping[str, str]) -> bytes:
    if entry.sha256 is not None:
        return bytes.fromhex(entry.sha256)
    if entry.env is not None:
        secret = environ.get(entry.env, "").strip()
        if not secret:
            raise dl_inference.ConfigError(
                f"{where}.env: the environment variable {entry.env} is not set or empty; "
                "export the key there before starting the server"
            )
        return _checked(secret, f"{where}.env", f"the environment variable {entry.env}")
    assert entry.file is not None
    try:
        secret = entry.file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise dl_inference.ConfigError(
            f"{where}.file: cannot read the key from {entry.file}: {reason}"
        ) from None
    if not secret:
        raise dl_inference.ConfigError(f"{where}.file: {entry.file} is empty; write the key in it")
    return _checked(secret, f"{where}.file", str(entry.file))


def _checked(secret: str, where: str, source: str) -> bytes:
    if len(secret) < MIN_KEY_LENGTH:
        raise dl_inference.ConfigError(
            f"{where}: the key in {source} has {len(secret)} characters, fewer than "
            f"{MIN_KEY_LENGTH}; use a random key, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _describe(error: ValidationError) -> Iterable[str]:
    for item in error.errors():
        where = PREFIX
        for part in item["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        if item["type"] == "extra_forbidden":
            # Suggest among the keys valid at that depth: a key entry's or the section's.
            inside_key = len(item["loc"]) > 2 and item["loc"][0] == "keys"
            known = sorted((KeyConfig if inside_key else AuthSettings).model_fields)
            guess = difflib.get_close_matches(str(item["loc"][-1]), known, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            yield f"{where}: unknown key{hint}; the keys are: {', '.join(known)}"
        elif item["type"] == "missing":
            yield f"{where}: required key missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            yield f"{where}: {message}"
