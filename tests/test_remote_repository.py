"""Remote model repositories: ``model_repository: s3://bucket/prefix`` mirrored into a local
cache, served and followed by the repository poll. Against a real S3-compatible server (moto's
server mode, a separate process on 127.0.0.1); the generic fsspec path through fsspec's
memory filesystem. gs:// is not tested: no GCS emulator here (it is the same code, gcsfs
doing the listing and downloads)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dl_inference.testing import ServerProcess, free_port

ADD = """
from dl_inference import PythonModel

class Add(PythonModel):
    def predict(self, inputs):
        return {"y": inputs["x"] + %d}
"""
CONFIG = """
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
# Credentials moto accepts; the secret must never reach the server's output.
SECRET = "remote-test-secret-value"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def infer(server: ServerProcess, model: str, version: str = "") -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [0, 0]}]}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    request = urllib.request.Request(server.http_url + path, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())["outputs"][0]["data"][0]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()).get("error")


# -- the generic fsspec path (memory://) ----------------------------------------------------


def test_mirror_fetches_changes_only_and_removes_what_left(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")
    from dl_inference.kernel.remote import MANIFEST, RemoteRepository

    fs = fsspec.filesystem("memory")
    root = f"/dli-test-{os.getpid()}"
    fs.pipe(f"{root}/a/config.yaml", CONFIG.encode())
    fs.pipe(f"{root}/a/1/model.py", (ADD % 1).encode())
    fs.pipe(f"{root}/b/1/model.py", (ADD % 5).encode())
    cache = tmp_path / "cache"
    mirror = RemoteRepository(f"memory://{root}", {}, cache)
    try:
        assert mirror.sync() == ["fetched a/config.yaml", "fetched a/1", "fetched b/1"]
        assert (cache / "a" / "1" / "model.py").read_text() == ADD % 1
        assert mirror.sync() == []  # nothing changed: nothing fetched
        fs.pipe(f"{root}/a/2/model.py", (ADD % 2).encode())
        fs.pipe(f"{root}/a/config.yaml", (CONFIG + "max_batch_size: 4\n").encode())
        assert mirror.sync() == ["fetched a/config.yaml", "fetched a/2"]
        assert "max_batch_size" in (cache / "a" / "config.yaml").read_text()
        fs.rm(f"{root}/a/1", recursive=True)
        fs.rm(f"{root}/b", recursive=True)
        assert mirror.sync() == ["removed a/1", "removed b/1"]
        left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
        assert left == [MANIFEST, "a", "a/2", "a/2/model.py", "a/config.yaml"]
        # A cache that lost its manifest is fetched again, not trusted.
        (cache / MANIFEST).unlink()
        assert mirror.sync() == ["fetched a/config.yaml", "fetched a/2"]
    finally:
        fs.rm(root, recursive=True)


def test_a_version_appears_only_complete(tmp_path: Path) -> None:
    """A download that fails half-way leaves no part of the version in the cache (the
    repository poll would load it half-written); the next sync fetches it whole."""
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed")
    from dl_inference.kernel.remote import RemoteRepository, RemoteRepositoryError

    fs = fsspec.filesystem("memory")
    root = f"/dli-partial-{os.getpid()}"
    fs.pipe(f"{root}/a/1/model.py", (ADD % 1).encode())
    fs.pipe(f"{root}/a/2/model.py", (ADD % 2).encode())
    fs.pipe(f"{root}/a/2/weights.bin", b"\0" * 64)
    cache = tmp_path / "cache"
    mirror = RemoteRepository(f"memory://{root}", {}, cache)
    real_get_file = fs.get_file

    def failing_get_file(remote: str, local: str, **kwargs: Any) -> None:
        if remote.endswith("weights.bin"):
            raise ConnectionResetError("connection reset by peer")
        real_get_file(remote, local, **kwargs)

    try:
        mirror._filesystem()
        fs.get_file = failing_get_file  # type: ignore[method-assign]
        with pytest.raises(RemoteRepositoryError, match="cannot fetch a/2: ConnectionResetError"):
            mirror.sync()
        assert (cache / "a" / "1" / "model.py").is_file()
        assert not (cache / "a" / "2").exists()
        assert sorted(p.name for p in cache.iterdir()) == [".dli-remote.json", "a"]
        fs.get_file = real_get_file  # type: ignore[method-assign]
        assert mirror.sync() == ["fetched a/2"]
        assert (cache / "a" / "2" / "weights.bin").stat().st_size == 64
    finally:
        fs.get_file = real_get_file  # type: ignore[method-assign]
        fs.rm(root, recursive=True)


def test_credentials_in_the_url_are_never_shown(tmp_path: Path) -> None:
    from dl_inference.kernel.remote import cache_folder, redact

    url = f"s3://key-id:{SECRET}@bucket/models"
    assert redact(url) == "s3://bucket/models"
    assert redact("memory:///models") == "memory:///models"
    assert SECRET not in str(cache_folder(url, {}, tmp_path))


def test_options_without_a_url_are_an_error() -> None:
    from dl_inference.kernel.config.loader import parse_server_config
    from dl_inference.spi.errors import ConfigError

    data = {"model_repository": "/srv/models", "model_repository_options": {"anon": True}}
    with pytest.raises(ConfigError, match="model_repository_options apply to a model_repository"):
        parse_server_config(data)
    config = parse_server_config({**data, "model_repository": "s3://bucket/models"})
    assert config.model_repository_url == "s3://bucket/models"
    assert config.model_repository is not None and config.model_repository.is_absolute()


def test_local_repository_never_imports_fsspec(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from dl_inference.cli import main
        assert main(["check-config", {str(tmp_path / "c.yaml")!r}]) == 0
        assert "fsspec" not in sys.modules, "fsspec imported for a local repository"
        """
    )
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    (tmp_path / "models" / "m" / "1" / "model.py").write_text(ADD % 1)
    (tmp_path / "c.yaml").write_text("model_repository: models\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_url_without_its_package_names_what_to_install(tmp_path: Path) -> None:
    """fsspec knows the protocol but its package is missing: the error says which to install."""
    pytest.importorskip("fsspec", reason="fsspec is not installed")
    from fsspec.registry import known_implementations

    if "gcsfs" not in known_implementations.get("gs", {}).get("class", ""):
        pytest.skip("this fsspec does not know gs://")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed: nothing is missing")
    except ImportError:
        pass
    (tmp_path / "c.yaml").write_text(
        f"model_repository: gs://some-bucket/models\n"
        f"server: {{repository_cache_dir: {tmp_path / 'cache'}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model_repository gs://some-bucket/models" in done.stderr
    assert "pip install fsspec gcsfs" in done.stderr


# -- a real S3-compatible server ------------------------------------------------------------


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """moto's S3 server in its own process; yields its endpoint and a boto3 client."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make test does)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (make test installs it)")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **AWS_ENV},
    )

    def accepting() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(accepting, "moto's S3 server to listen")
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="models-bucket")
        yield {"endpoint": endpoint, "client": client, "process": server}
    finally:
        server.terminate()
        server.wait(10)


def upload_model(client: Any, name: str, version: int, offset: int) -> None:
    client.put_object(Bucket="models-bucket", Key=f"models/{name}/config.yaml", Body=CONFIG)
    key = f"models/{name}/{version}/model.py"
    client.put_object(Bucket="models-bucket", Key=key, Body=ADD % offset)


def serve_config(tmp_path: Path, endpoint: str, bucket: str = "models-bucket") -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(
        f"model_repository: s3://{bucket}/models\n"
        # One attempt per poll: a stopped server is reported at once, the next poll retries.
        f"model_repository_options: {{endpoint_url: '{endpoint}', "
        "config_kwargs: {retries: {max_attempts: 1}, connect_timeout: 2}}\n"
        f"server: {{repository_poll_s: 0.3, repository_cache_dir: {tmp_path / 'cache'}}}\n"
    )
    return path


def test_s3_repository_serves_follows_and_survives_the_remote(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    client = s3["client"]
    upload_model(client, "adder", 1, 1)
    upload_model(client, "doomed", 1, 7)
    config = serve_config(tmp_path, s3["endpoint"])
    with ServerProcess(["-c", str(config)], env=AWS_ENV) as server:
        assert infer(server, "adder") == (200, 1.0)
        assert infer(server, "doomed") == (200, 7.0)
        # A version added while serving is served within a few polls (the latest wins).
        upload_model(client, "adder", 2, 2)
        wait_for(lambda: infer(server, "adder") == (200, 2.0), "version 2 served")
        assert infer(server, "adder", "2") == (200, 2.0)
        # A model deleted from the bucket is unloaded.
        for key in ("models/doomed/config.yaml", "models/doomed/1/model.py"):
            client.delete_object(Bucket="models-bucket", Key=key)
        wait_for(lambda: infer(server, "doomed")[0] == 404, "doomed unloaded")
        # The S3 server goes away: the cached models keep serving and the log says why.
        s3["process"].terminate()
        s3["process"].wait(10)
        wait_for(
            lambda: "remote model repository unreadable" in server.output(), "the failure logged"
        )
        time.sleep(1)  # a few more polls fail
        assert infer(server, "adder") == (200, 2.0)
        output = server.output()
        assert "s3://models-bucket/models" in output
        assert output.count("remote model repository unreadable") == 1  # once, not per poll
    assert SECRET not in server.output()


def test_s3_bucket_that_does_not_exist_stops_the_start(s3: dict[str, Any], tmp_path: Path) -> None:
    """From the command line, the endpoint from the standard AWS_ENDPOINT_URL variable."""
    url = "s3://no-such-bucket/models"
    flags = ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "serve", "--model-repository", url, *flags],
        capture_output=True,
        text=True,
        env={**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": s3["endpoint"]},
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model_repository s3://no-such-bucket/models: not found" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_s3_repository_with_worker_processes_sharing_the_cache(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    """serve --workers 2: both processes mirror into one cache folder; each serves the new
    version once it is uploaded."""
    client = s3["client"]
    upload_model(client, "adder", 1, 1)
    config = serve_config(tmp_path, s3["endpoint"])
    with ServerProcess(["-c", str(config), "--workers", "2"], env=AWS_ENV) as server:
        assert infer(server, "adder") == (200, 1.0)
        upload_model(client, "adder", 2, 2)
        # New connections land on either process (SO_REUSEPORT): all must answer 2.
        wait_for(
            lambda: all(infer(server, "adder") == (200, 2.0) for _ in range(20)),
            "version 2 served by every worker",
        )
        assert "Traceback" not in server.output()
    cache = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == [".dli-remote.json", "adder"]


def test_config_reload_to_another_prefix_follows_it(s3: dict[str, Any], tmp_path: Path) -> None:
    """The config file names another prefix while serving: its models load, and the
    repository poll follows the new mirror (a version uploaded there loads), not the old one.
    (Models of the old repository stay loaded, as for a local model_repository changed.)"""
    client = s3["client"]
    upload_model(client, "adder", 1, 1)
    client.put_object(Bucket="models-bucket", Key="other/fresh/config.yaml", Body=CONFIG)
    client.put_object(Bucket="models-bucket", Key="other/fresh/1/model.py", Body=ADD % 9)
    config = serve_config(tmp_path, s3["endpoint"])
    with ServerProcess(["-c", str(config)], env=AWS_ENV) as server:
        assert infer(server, "adder") == (200, 1.0)
        text = config.read_text()
        config.write_text(text.replace("s3://models-bucket/models", "s3://models-bucket/other"))
        wait_for(lambda: infer(server, "fresh") == (200, 9.0), "the new prefix served")
        client.put_object(Bucket="models-bucket", Key="other/fresh/2/model.py", Body=ADD % 10)
        wait_for(lambda: infer(server, "fresh") == (200, 10.0), "a version under the new prefix")


def test_check_config_names_the_url_and_the_models(s3: dict[str, Any], tmp_path: Path) -> None:
    upload_model(s3["client"], "adder", 1, 1)
    config = serve_config(tmp_path, s3["endpoint"])
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **AWS_ENV},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"model repository: s3://models-bucket/models, cached in {tmp_path / 'cache'}" in (
        done.stdout
    )
    assert "model adder: backend python, version(s) 1" in done.stdout
