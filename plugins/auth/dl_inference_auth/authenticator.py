"""Who is calling and may they call this model: credentials in, a Decision (or None) out."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import dl_inference
from dl_inference_auth.settings import Key

# Where RequestContext.extras records the name of the key that was accepted, so access
# logs and audit plugins can tell callers apart without ever seeing the secret.
EXTRAS_KEY = "auth.key_name"

HOW_TO_SEND = "send it as 'authorization: Bearer <key>' or 'x-api-key: <key>'"


class CredentialError(ValueError):
    """The request carries credentials in a form this plugin cannot read."""


def presented_key(metadata: Mapping[str, str]) -> str | None:
    """The key in ``authorization: Bearer <key>`` or ``x-api-key: <key>``; None if neither.

    Both headers may be sent when they agree. ``metadata`` has lower-cased names (gRPC
    metadata and HTTP headers alike, as RequestContext promises).
    """
    bearer = None
    header = metadata.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CredentialError(
                f"the authorization header must read 'Bearer <key>' (got scheme "
                f"{scheme or 'nothing'!r})"
            )
        bearer = token.strip()
    api_key = metadata.get("x-api-key")
    api_key = api_key.strip() if api_key is not None else None
    if (
        bearer is not None
        and api_key
        and not hmac.compare_digest(bearer.encode(), api_key.encode())
    ):
        raise CredentialError(
            "the authorization and x-api-key headers carry different keys; send one"
        )
    return bearer or api_key or None


def _allowed(patterns: Sequence[str], model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in patterns)


class Authenticator:
    """Checks a request's key against the configured ones and the model's allow list."""

    def __init__(self, keys: Sequence[Key], public_models: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        self.public_models = tuple(public_models)

    def identify(self, secret: str) -> Key | None:
        """The configured key equal to ``secret``, or None.

        Compares SHA-256 digests with ``hmac.compare_digest`` against every key without
        stopping at a match, so the time taken tells nothing about the secret or about
        which key (if any) matched.
        """
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def decide(
        self, model: str, metadata: Mapping[str, str]
    ) -> tuple[dl_inference.Decision | None, Key | None]:
        """(None, key) to let the call through, or (a deny Decision, None) to refuse it."""
        if _allowed(self.public_models, model):
            return None, None
        try:
            secret = presented_key(metadata)
        except CredentialError as exc:
            return dl_inference.Decision.deny(f"{exc}", authenticated=False), None
        if secret is None:
            return (
                dl_inference.Decision.deny(
                    f"model {model!r} needs an API key: {HOW_TO_SEND}", authenticated=False
                ),
                None,
            )
        key = self.identify(secret)
        if key is None:
            # Never echo the secret: it may be a real key meant for another service.
            return (
                dl_inference.Decision.deny(
                    "the API key is not valid here; check it, or ask the operator for one",
                    authenticated=False,
                ),
                None,
            )
        if not _allowed(key.models, model):
            return (
                dl_inference.Decision.deny(
                    f"API key {key.name!r} may not call model {model!r}; ask the operator to "
                    f"add it to {key.where}.models"
                ),
                None,
            )
        return None, key
