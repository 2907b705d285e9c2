"""config.properties' addresses are where the server listens, as TorchServe's ``--ts-config``
makes it listen: ``inference_address``, ``management_address`` (with the management token),
``grpc_inference_port``, ``grpc_management_port``; a key the file leaves out is TorchServe
0.12's default (REST inference on 127.0.0.1:8080, gRPC on 127.0.0.1:7070; management, off
unless turned on, on 8081 / 7071). The server YAML names only the file; a command-line flag
(or a key the YAML gives) wins over the file and its defaults; a bad address is a config
error naming the file and its key.

8080 and 7070 are not this test's to own: the defaults are checked in the mapping's result,
in ``check-config`` (a real CLI process applying them) and by a real server on a YAML's and a
flag's free ports; a real server on 8080 / 7070 themselves runs only when both are free."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import structlog.testing
from _ts_archives import write_mar
from dl_inference_torchserve.settings import read_properties

from dl_inference.testing import ServerProcess, free_port

ECHO = """
    def handle(data, context):
        if data is None:
            return None
        return ["ok" for _ in data]
"""
TOKEN = "torchserve-listeners-token"


def call(
    url: str, body: bytes | None = None, token: str | None = None, method: str | None = None
) -> int:
    request = urllib.request.Request(url, data=body, method=method or ("POST" if body else "GET"))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def write_files(work: Path, properties: str) -> Path:
    """A store with ``echo.mar``, ``config.properties`` (``properties`` added) and a server
    YAML naming only that file; returns the YAML's path."""
    write_mar(work / "store", "echo", {"echo.py": ECHO}, "echo.py")
    (work / "config.properties").write_text(f"model_store=store\n{properties}")
    (work / "server.yaml").write_text(
        "plugin_settings:\n  torchserve:\n    config_properties: config.properties\n"
    )
    return work / "server.yaml"


def run_cli(work: Path, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DLI_TORCHSERVE_CACHE": str(work / "cache")}
    if token:
        env["DLI_MANAGEMENT_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "dl_inference", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_file_addresses_are_where_the_server_listens(tmp_path: Path) -> None:
    http, management, grpc_port, grpc_management, metrics = (free_port() for _ in range(5))
    config = write_files(
        tmp_path,
        f"inference_address=http://127.0.0.1:{http}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        f"grpc_inference_address=127.0.0.1\ngrpc_inference_port={grpc_port}\n"
        f"grpc_management_port={grpc_management}\nload_models=echo.mar\n",
    )
    write_mar(tmp_path / "store", "later", {"echo.py": ECHO}, "echo.py")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache"), "DLI_MANAGEMENT_TOKEN": TOKEN}
    # No --host / --port flags: the file alone says where to listen.
    with ServerProcess(["-c", str(config)], env=env, extra_flags=False) as server:
        assert (server.http_port, server.grpc_port) == (http, grpc_port), server.output()
        # TorchServe's metrics API port: /metrics there, as a scrape of it expects.
        assert server.metrics_port == metrics, server.output()
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 60
        while call(f"{base}/predictions/echo", b"hi") == 503:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert call(f"{base}/ping") == 200
        assert call(f"{base}/predictions/echo", b"hi") == 200
        # TorchServe's management API on management_address, behind the token.
        assert call(f"http://127.0.0.1:{management}/models") == 401
        assert call(f"http://127.0.0.1:{management}/models", token=TOKEN) == 200
        # Registered from the file's model_store, as TorchServe registers.
        register = f"http://127.0.0.1:{management}/models?url=later.mar&initial_workers=1"
        assert call(register, token=TOKEN, method="POST") == 200, server.output()
        assert grpc_predict(grpc_port) == b"ok"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_management}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as reply:
            scraped = reply.read().decode()
        assert 'dli_requests_total{model="echo",' in scraped
    checked = run_cli(tmp_path, "check-config", str(config), token=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    where = tmp_path / "config.properties"
    for line in (
        f"  server.http.port: {http} (from {where}: inference_address)",
        f"  management.http_port: {management} (from {where}: management_address)",
        f"  server.grpc.port: {grpc_port} (from {where}: grpc_inference_port)",
        f"  management.grpc_port: {grpc_management} (from {where}: grpc_management_port)",
        f"  management.enabled: True (from {where}: management_address)",
        f"  server.metrics.port: {metrics} (from {where}: metrics_address)",
    ):
        assert line in checked.stdout.splitlines(), checked.stdout


def test_a_flag_and_the_yaml_win_over_the_file(tmp_path: Path) -> None:
    in_file, flag = free_port(), free_port()
    config = write_files(
        tmp_path,
        f"inference_address=http://127.0.0.1:{in_file}\ngrpc_inference_port={free_port()}\n",
    )
    grpc_in_yaml = free_port()
    config.write_text(config.read_text() + f"server:\n  grpc: {{port: {grpc_in_yaml}}}\n")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    args = ["-c", str(config), "--http-port", str(flag)]
    with ServerProcess(args, env=env, extra_flags=False) as server:
        assert (server.http_port, server.grpc_port) == (flag, grpc_in_yaml), server.output()
        assert call(f"http://127.0.0.1:{flag}/ping") == 200
    checked = run_cli(tmp_path, "check-config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert f"  server.grpc.port: {grpc_in_yaml} (from the server config or a flag)" in lines
    assert (
        f"  server.http.port: {in_file} (from {tmp_path / 'config.properties'}: "
        "inference_address)" in lines
    )
    assert "  management.enabled: False (from default)" in lines


def test_a_bad_address_is_a_config_error_naming_the_file_and_key(tmp_path: Path) -> None:
    where = tmp_path / "config.properties"
    cases = {
        "inference_address=127.0.0.1:8080\n": f"{where}: inference_address=127.0.0.1:8080: "
        "write http://HOST:PORT",
        "management_address=https://127.0.0.1:8081\n": f"{where}: management_address="
        "https://127.0.0.1:8081: https is not applied",
        "grpc_inference_port=seventy\n": f"{where}: grpc_inference_port=seventy: give a port",
        "grpc_management_port=70000\n": f"{where}: grpc_management_port: 70000 for "
        "management.grpc_port: Input should be less than or equal to 65535",
    }
    config = write_files(tmp_path, "")
    for properties, message in cases.items():
        where.write_text(f"model_store=store\n{properties}")
        for command in ("check-config", "serve -c"):
            result = run_cli(tmp_path, *command.split(), str(config))
            assert result.returncode == 2, (properties, result.stdout + result.stderr)
            assert f"dl-inference: error: {message}" in result.stderr, result.stderr


def test_management_address_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    config = write_files(tmp_path, f"management_address=http://127.0.0.1:{free_port()}\n")
    result = run_cli(tmp_path, "serve", "-c", str(config), token=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "needs a token of 16+ characters: set the environment variable "
        "DLI_MANAGEMENT_TOKEN" in result.stderr
    ), result.stderr


def grpc_predict(port: int) -> bytes:
    """``echo`` through TorchServe's gRPC ``Predictions`` on 127.0.0.1:``port``."""
    from dl_inference_torchserve._proto import torchserve_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        predict = channel.unary_unary(
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
            request_serializer=pb.PredictionsRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        request = pb.PredictionsRequest(model_name="echo", input={"body": b"hi"})
        return predict(request, timeout=30).prediction


def wait_ready(base: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + 60
    while call(f"{base}/predictions/echo", b"hi") == 503:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.2)


def test_a_file_without_addresses_maps_to_torchserves_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.properties"
    path.write_text("load_models=all\n")
    default = f"{path}: no %s, TorchServe's default %s"
    assert read_properties(path).listeners == {
        "server.http.host": ("127.0.0.1", default % ("inference_address", "http://127.0.0.1:8080")),
        "server.http.port": (8080, default % ("inference_address", "http://127.0.0.1:8080")),
        "server.grpc.host": ("127.0.0.1", default % ("grpc_inference_address", "127.0.0.1")),
        "server.grpc.port": (7070, default % ("grpc_inference_port", "7070")),
        # Where management listens when on; only a management_address turns it on.
        "management.host": ("127.0.0.1", default % ("management_address", "http://127.0.0.1:8081")),
        "management.http_port": (8081, default % ("management_address", "http://127.0.0.1:8081")),
        "management.grpc_port": (7071, default % ("grpc_management_port", "7071")),
    }


def test_a_file_giving_the_addresses_maps_them_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.properties"
    path.write_text(
        "inference_address=http://0.0.0.0:9080\nmanagement_address=http://0.0.0.0:9081\n"
        "grpc_inference_address=0.0.0.0\ngrpc_inference_port=9070\n"
        "grpc_management_address=0.0.0.0\ngrpc_management_port=9071\n"
    )
    given = f"{path}: %s"
    assert read_properties(path).listeners == {
        "server.http.host": ("0.0.0.0", given % "inference_address"),
        "server.http.port": (9080, given % "inference_address"),
        "server.grpc.host": ("0.0.0.0", given % "grpc_inference_address"),
        "server.grpc.port": (9070, given % "grpc_inference_port"),
        "management.host": ("0.0.0.0", given % "management_address"),
        "management.http_port": (9081, given % "management_address"),
        "management.grpc_port": (9071, given % "grpc_management_port"),
        "management.enabled": (True, given % "management_address"),
    }
    # metrics_address, given, is the metrics listener; left out (above), there is none.
    path.write_text(path.read_text() + "metrics_address=http://0.0.0.0:9082\n")
    listeners = read_properties(path).listeners
    assert listeners["server.metrics.host"] == ("0.0.0.0", given % "metrics_address")
    assert listeners["server.metrics.port"] == (9082, given % "metrics_address")


def test_a_flag_and_the_yaml_win_over_torchserves_defaults(tmp_path: Path) -> None:
    """No address in the file: ``check-config`` shows TorchServe's defaults applied where
    nothing else says; ``serve`` listens on the YAML's gRPC port and the flag's HTTP port
    (``--host`` keeps a broken default off 0.0.0.0)."""
    config = write_files(tmp_path, "load_models=echo.mar\n")
    checked = run_cli(tmp_path, "check-config", str(config), token=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    where = tmp_path / "config.properties"
    for line in (
        f"  server.http.host: 127.0.0.1 (from {where}: no inference_address, TorchServe's "
        "default http://127.0.0.1:8080)",
        f"  server.http.port: 8080 (from {where}: no inference_address, TorchServe's "
        "default http://127.0.0.1:8080)",
        f"  server.grpc.host: 127.0.0.1 (from {where}: no grpc_inference_address, "
        "TorchServe's default 127.0.0.1)",
        f"  server.grpc.port: 7070 (from {where}: no grpc_inference_port, TorchServe's "
        "default 7070)",
        f"  management.http_port: 8081 (from {where}: no management_address, TorchServe's "
        "default http://127.0.0.1:8081)",
        "  management.enabled: False (from default)",
    ):
        assert line in checked.stdout.splitlines(), checked.stdout
    grpc_in_yaml, flag = free_port(), free_port()
    config.write_text(config.read_text() + f"server:\n  grpc: {{port: {grpc_in_yaml}}}\n")
    checked = run_cli(tmp_path, "check-config", str(config), token=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert f"  server.grpc.port: {grpc_in_yaml} (from the server config or a flag)" in lines
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    args = ["-c", str(config), "--http-port", str(flag), "--host", "127.0.0.1"]
    with ServerProcess(args, env=env, extra_flags=False) as server:
        assert (server.http_port, server.grpc_port) == (flag, grpc_in_yaml), server.output()
        wait_ready(f"http://127.0.0.1:{flag}", server)
        assert call(f"http://127.0.0.1:{flag}/predictions/echo", b"hi") == 200
        assert grpc_predict(grpc_in_yaml) == b"ok"
        # Answered without a key, where TorchServe would want one: the server said so.
        server.wait_for_output("leaves TorchServe's token authorization on")


def test_without_addresses_the_server_listens_on_torchserves_ports(tmp_path: Path) -> None:
    """REST inference on 8080, gRPC on 7070, as TorchServe's clients expect (only when this
    machine has both free: the test cannot own them)."""
    import socket

    for port in (8080, 7070):
        with socket.socket() as probe:
            # As a server binds: a port that only has closed connections waiting is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"127.0.0.1:{port} is in use here; the defaults are checked above")
    config = write_files(tmp_path, "load_models=echo.mar\n")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    # --host only: a broken mapping must not listen on 0.0.0.0 (dl-inference's default).
    args = ["-c", str(config), "--host", "127.0.0.1"]
    with ServerProcess(args, env=env, extra_flags=False) as server:
        assert (server.http_port, server.grpc_port) == (8080, 7070), server.output()
        wait_ready("http://127.0.0.1:8080", server)
        assert call("http://127.0.0.1:8080/ping") == 200
        assert call("http://127.0.0.1:8080/predictions/echo", b"hi") == 200
        assert grpc_predict(7070) == b"ok"


@pytest.mark.parametrize(
    ("line", "warned"),
    [
        ("", True),  # TorchServe 0.12's default: tokens on
        ("disable_token_authorization=false\n", True),
        ("disable_token_authorization=true\n", False),
        ("disable_token_authorization = TRUE\n", False),
    ],
)
def test_a_file_leaving_torchserves_tokens_on_is_served_with_a_warning(
    tmp_path: Path, line: str, warned: bool
) -> None:
    """TorchServe 0.12 refuses calls without a key from its key_file.json unless the file
    disables that (measured on the reference: 400 InvalidKeyException, /ping included);
    dl-inference does not check those keys, and says so rather than serve silently open."""
    path = tmp_path / "config.properties"
    path.write_text(f"load_models=all\n{line}")
    with structlog.testing.capture_logs() as logs:
        read_properties(path)
    warnings = [e for e in logs if "token authorization" in e["event"]]
    assert bool(warnings) is warned, logs
    if warned:
        (warning,) = warnings
        assert warning["log_level"] == "warning" and warning["file"] == str(path)
        assert "answers inference calls without a key" in warning["event"]
        assert "disable_token_authorization=true" in warning["event"]
    # Read, so never among the keys reported as not used.
    unused = [e for e in logs if e["event"].startswith("config.properties keys not used")]
    assert all("disable_token_authorization" not in e["keys"] for e in unused)
