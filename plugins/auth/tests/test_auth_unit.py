"""The auth plugin alone: settings, key sources, credential parsing, decisions, hooks."""

from __future__ import annotations

import hashlib
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import dl_inference
import dl_inference_auth
from dl_inference import ConfigError, Decision, InferRequest, RequestContext
from dl_inference.kernel.plugins import PluginHost
from dl_inference_auth import EXTRAS_KEY, build_authenticator, presented_key

READER_KEY = "reader-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"
FILE_KEY = "file-key-00112233445566778899"
ENV = {"DLI_TEST_READER": READER_KEY}


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.txt"
    path.write_text(FILE_KEY + "\n")  # a trailing newline, as `echo` writes it
    return path


@pytest.fixture
def settings(key_file: Path) -> dict:
    return {
        "keys": [
            {"name": "reader", "env": "DLI_TEST_READER", "models": ["add_one"]},
            {"name": "admin", "sha256": sha(ADMIN_KEY).upper(), "models": ["*"]},
            {"name": "scaler", "file": str(key_file), "models": ["times_*"]},
        ],
        "public_models": ["demo"],
    }


@pytest.fixture
def auth(settings: dict) -> dl_inference_auth.Authenticator:
    built = build_authenticator(settings, ENV)
    assert built is not None
    return built


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# -- settings --------------------------------------------------------------------------------


def test_empty_section_turns_the_plugin_off() -> None:
    assert build_authenticator({}) is None


def test_keys_from_env_file_and_digest_are_recognised(auth) -> None:
    assert auth.identify(READER_KEY).name == "reader"
    assert auth.identify(ADMIN_KEY).name == "admin"
    assert auth.identify(FILE_KEY).name == "scaler"  # the newline in the file is stripped
    assert auth.identify("nobody-has-this-key-123456") is None
    assert auth.identify(READER_KEY + "x") is None
    # Only digests are kept, never the secrets themselves.
    assert all(len(key.digest) == 32 for key in auth.keys)
    assert READER_KEY.encode() not in b"".join(key.digest for key in auth.keys)


@pytest.mark.parametrize(
    ("change", "named", "says"),
    [
        (lambda s: s.update(key=[]), "plugin_settings.auth.key:", "did you mean keys?"),
        (lambda s: s.pop("keys"), "plugin_settings.auth.keys:", "required key missing"),
        (lambda s: s.update(keys=[]), "plugin_settings.auth.keys:", "at least 1"),
        (
            lambda s: s["keys"][1].update(modles=["x"]),
            "plugin_settings.auth.keys[1].modles:",
            "did you mean models?",
        ),
        (
            lambda s: s["keys"][1].update(sha256="abc"),
            "plugin_settings.auth.keys[1].sha256:",
            "64 hex digits",
        ),
        (
            lambda s: s["keys"][0].update(sha256=sha("x")),
            "plugin_settings.auth.keys[0]:",
            "exactly one of env",
        ),
        (
            lambda s: s["keys"][0].pop("env"),
            "plugin_settings.auth.keys[0]:",
            "got none",
        ),
        (
            lambda s: s["keys"][0].pop("models"),
            "plugin_settings.auth.keys[0].models:",
            "required key missing",
        ),
        (
            lambda s: s["keys"][0].update(models=[""]),
            "plugin_settings.auth.keys[0].models:",
            'use "*" for every model',
        ),
        (
            lambda s: s["keys"][0].update(env="DLI_TEST_UNSET"),
            "plugin_settings.auth.keys[0].env:",
            "DLI_TEST_UNSET is not set",
        ),
        (
            lambda s: s["keys"][2].update(file="/nonexistent/key"),
            "plugin_settings.auth.keys[2].file:",
            "cannot read the key from /nonexistent/key",
        ),
        (
            lambda s: s["keys"][2].update(name="reader"),
            "plugin_settings.auth.keys[2].name:",
            "already the name of plugin_settings.auth.keys[0]",
        ),
        (
            lambda s: s["keys"][1].update(sha256=sha(READER_KEY)),
            "plugin_settings.auth.keys[1]:",
            "the same secret as plugin_settings.auth.keys[0]",
        ),
    ],
)
def test_bad_settings_name_the_key(settings: dict, change, named: str, says: str) -> None:
    change(settings)
    with pytest.raises(ConfigError) as caught:
        build_authenticator(settings, ENV)
    assert named in str(caught.value)
    assert says in str(caught.value)


def test_short_keys_are_refused(settings: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\]\.env: .* fewer than 16"):
        build_authenticator(settings, {"DLI_TEST_READER": "hunter2"})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    settings["keys"][2]["file"] = str(empty)
    with pytest.raises(ConfigError, match=r"keys\[2\]\.file: .* is empty"):
        build_authenticator(settings, ENV)


# -- credentials and decisions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, None),
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer   abc  "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Bearer abc", "x-api-key": "abc"}, "abc"),
    ],
)
def test_presented_key(metadata: dict[str, str], expected: str | None) -> None:
    assert presented_key(metadata) == expected


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({"authorization": "Basic dXNlcjpwYXNz"}, "must read 'Bearer <key>'"),
        ({"authorization": "Bearer"}, "must read 'Bearer <key>'"),
        ({"authorization": "Bearer abc", "x-api-key": "abd"}, "carry different keys"),
    ],
)
def test_unreadable_credentials_are_unauthenticated(auth, metadata, says: str) -> None:
    decision, key = auth.decide("add_one", metadata)
    assert key is None
    assert decision == Decision(False, decision.reason, authenticated=False)
    assert says in decision.reason


def test_decisions(auth) -> None:
    missing, _ = auth.decide("add_one", {})
    assert not missing.allowed and not missing.authenticated
    assert "needs an API key" in missing.reason and "Bearer <key>" in missing.reason

    unknown, _ = auth.decide("add_one", bearer("not-a-configured-key-42"))
    assert not unknown.allowed and not unknown.authenticated
    assert "not-a-configured-key-42" not in unknown.reason  # secrets are never echoed

    wrong_model, _ = auth.decide("times_two", bearer(READER_KEY))
    assert not wrong_model.allowed and wrong_model.authenticated
    assert "'reader' may not call model 'times_two'" in wrong_model.reason
    assert "plugin_settings.auth.keys[0].models" in wrong_model.reason

    assert auth.decide("add_one", bearer(READER_KEY)) == (None, auth.keys[0])
    assert auth.decide("add_one", {"x-api-key": READER_KEY}) == (None, auth.keys[0])
    assert auth.decide("times_two", bearer(ADMIN_KEY)) == (None, auth.keys[1])
    assert auth.decide("times_two", {"x-api-key": FILE_KEY}) == (None, auth.keys[2])
    # Glob allow list: times_* does not match add_one.
    assert auth.decide("add_one", {"x-api-key": FILE_KEY})[0].authenticated
    # Public models need no key, and a bad one does not hurt them.
    assert auth.decide("demo", {}) == (None, None)
    assert auth.decide("demo", bearer("garbage")) == (None, None)


# -- through the plugin manager, as the kernel calls it ------------------------------------------


@pytest.fixture
def host() -> PluginHost:
    """A fresh plugin host holding only the kernel built-ins and this plugin."""
    entry = EntryPoint(name="auth", value="dl_inference_auth", group="dl_inference")
    yield PluginHost(entry_points=[entry]).load()
    dl_inference_auth._authenticator = None  # module state: leave it off for other tests


def authorize(host: PluginHost, model: str, metadata: dict[str, str]) -> RequestContext:
    ctx = RequestContext("test", "infer", metadata=metadata)
    ctx.request = InferRequest(model, {"x": np.zeros(3, np.float32)})
    ctx.extras["decision"] = host.pm.hook.dli_authorize(ctx=ctx)
    return ctx


def test_hooks_registered_and_declared(host: PluginHost) -> None:
    info = next(p for p in host.plugins if p.name == "auth")
    assert info.status == "loaded", info.error
    assert info.hooks == ["dli_authorize", "dli_configure"]
    assert (
        dl_inference_auth.DLI_HOOKSPEC_VERSION.split(".")[0]
        == (dl_inference.HOOKSPEC_VERSION.split(".")[0])
    )


def test_configure_and_authorize_through_the_hooks(
    host: PluginHost, settings: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DLI_TEST_READER", READER_KEY)
    host.configure({"auth": settings})
    denied = authorize(host, "add_one", {})
    assert denied.extras["decision"].authenticated is False
    allowed = authorize(host, "add_one", bearer(READER_KEY))
    assert allowed.extras["decision"] is None
    assert allowed.extras[EXTRAS_KEY] == "reader"
    forbidden = authorize(host, "times_two", bearer(READER_KEY))
    assert forbidden.extras["decision"].authenticated is True
    assert EXTRAS_KEY not in forbidden.extras


def test_unconfigured_plugin_allows_everything(host: PluginHost) -> None:
    host.configure({})
    assert authorize(host, "add_one", {}).extras["decision"] is None


def test_configure_error_names_the_key(host: PluginHost) -> None:
    with pytest.raises(ConfigError, match=r"^plugin_settings\.auth\.keys\[0\]\.env: "):
        host.configure(
            {"auth": {"keys": [{"name": "a", "env": "DLI_TEST_UNSET_VAR", "models": ["*"]}]}}
        )
