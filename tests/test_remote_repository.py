"""Remote model repositories: ``model_repository: s3://bucket/prefix`` mirrored into a local
cache, served and followed by the repository poll. Against real object store servers, each a
separate process on 127.0.0.1: moto's S3 server (s3://, through s3fs) and gcp-storage-emulator
(gs://, through gcsfs); the generic fsspec path through fsspec's memory filesystem."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    (tmp_path / "c.yaml").write_text(
        f"model_repository: gs://some-bucket/models\n"
        f"server: {{repository_cache_dir: {tmp_path / 'cache'}}}\n"
    )
    # gcsfs made unimportable (None in sys.modules), whether or not it is installed.
    code = "import sys; sys.modules['gcsfs'] = None; from dl_inference.cli import main; "
    code += f"sys.exit(main(['check-config', {str(tmp_path / 'c.yaml')!r}]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model_repository gs://some-bucket/models" in done.stderr
    assert "pip install fsspec gcsfs" in done.stderr


# -- real object store servers -------------------------------------------------------------


@dataclass
class Store:
    """A bucket on an object store server that the test runs as a separate process: what a
    server's config and environment need to reach it, and a client of the store's own SDK."""

    scheme: str
    endpoint: str
    process: subprocess.Popen[bytes]
    put: Callable[[str, str], None]  # (key, body)
    delete: Callable[[str], None]
    options: dict[str, Any]  # model_repository_options
    env: dict[str, str]  # what the server runs with
    endpoint_env: dict[str, str]  # the endpoint named by the environment, not the config
    bucket: str = "models-bucket"

    def url(self, prefix: str = "models", bucket: str | None = None) -> str:
        return f"{self.scheme}://{bucket or self.bucket}/{prefix}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_server(command: list[str], port: int, env: dict[str, str], what: str) -> Any:
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env}
    )

    def accepting() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(accepting, f"{what} to listen")
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return process


@contextlib.contextmanager
def s3_store() -> Iterator[Store]:
    """moto's S3 server; the bucket filled through boto3."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make test does)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (make test installs it)")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = start_server(command, port, AWS_ENV, "moto's S3 server")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="models-bucket")
        yield Store(
            scheme="s3",
            endpoint=endpoint,
            process=process,
            put=lambda key, body: client.put_object(Bucket="models-bucket", Key=key, Body=body),
            delete=lambda key: client.delete_object(Bucket="models-bucket", Key=key),
            # One attempt per poll: a stopped server is reported at once.
            options={
                "endpoint_url": endpoint,
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
            },
            env=AWS_ENV,
            endpoint_env={**AWS_ENV, "AWS_ENDPOINT_URL": endpoint},
        )
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def gcs_store() -> Iterator[Store]:
    """gcp-storage-emulator (Google Cloud Storage's JSON API, in memory); the bucket filled
    through google-cloud-storage, Google's own client."""
    pytest.importorskip("gcsfs", reason="gcsfs is not installed (make test installs it)")
    emulator = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    if emulator is None:
        pytest.skip("gcp-storage-emulator is not installed (make test installs it)")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    command = [emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    command += ["--default-bucket", "models-bucket"]
    process = start_server(command, port, {}, "the GCS emulator")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = storage.Client(
            project="dli-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
        bucket = client.bucket("models-bucket")
        yield Store(
            scheme="gs",
            endpoint=endpoint,
            process=process,
            put=lambda key, body: bucket.blob(key).upload_from_string(body),
            delete=lambda key: bucket.blob(key).delete(),
            # An emulator takes no credentials: anonymous, as Google's clients call it.
            options={"endpoint_url": endpoint, "token": "anon"},
            # No look for Compute Engine's metadata server (no such server here).
            env={"NO_GCE_CHECK": "true"},
            endpoint_env={"NO_GCE_CHECK": "true", "STORAGE_EMULATOR_HOST": endpoint},
        )
    finally:
        process.terminate()
        process.wait(10)


STORES = {"s3": s3_store, "gs": gcs_store}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each real object store server in turn."""
    with STORES[request.param]() as running:
        yield running


@pytest.fixture
def s3() -> Iterator[Store]:
    """moto's S3 server alone: for what the kernel does the same whatever the store."""
    with s3_store() as running:
        yield running


def upload_model(
    store: Store, name: str, version: int, offset: int, prefix: str = "models"
) -> None:
    store.put(f"{prefix}/{name}/config.yaml", CONFIG)
    store.put(f"{prefix}/{name}/{version}/model.py", ADD % offset)


def serve_config(tmp_path: Path, store: Store) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_repository": store.url(),
                "model_repository_options": store.options,
                "server": {
                    "repository_poll_s": 0.3,
                    "repository_cache_dir": str(tmp_path / "cache"),
                },
            }
        )
    )
    return path


def test_repository_serves_follows_and_survives_the_remote(store: Store, tmp_path: Path) -> None:
    upload_model(store, "adder", 1, 1)
    upload_model(store, "doomed", 1, 7)
    config = serve_config(tmp_path, store)
    with ServerProcess(["-c", str(config)], env=store.env) as server:
        assert infer(server, "adder") == (200, 1.0)
        assert infer(server, "doomed") == (200, 7.0)
        # A version added while serving is served within a few polls (the latest wins).
        upload_model(store, "adder", 2, 2)
        wait_for(lambda: infer(server, "adder") == (200, 2.0), "version 2 served")
        assert infer(server, "adder", "2") == (200, 2.0)
        # A model deleted from the bucket is unloaded.
        for key in ("models/doomed/config.yaml", "models/doomed/1/model.py"):
            store.delete(key)
        wait_for(lambda: infer(server, "doomed")[0] == 404, "doomed unloaded")
        # The server goes away: the cached models keep serving and the log says why (gcsfs
        # retries a refused connection for about half a minute before it gives up).
        store.stop()
        wait_for(
            lambda: "remote model repository unreadable" in server.output(),
            "the failure logged",
            timeout=120,
        )
        time.sleep(1)  # more polls fail
        assert infer(server, "adder") == (200, 2.0)
        output = server.output()
        assert store.url() in output
        assert output.count("remote model repository unreadable") == 1  # once, not per poll
        assert "Traceback" not in output  # nor the storage library's own report per retry
    assert SECRET not in server.output()


def test_bucket_that_does_not_exist_stops_the_start(store: Store, tmp_path: Path) -> None:
    """From the command line, the endpoint from the standard variable (AWS_ENDPOINT_URL,
    STORAGE_EMULATOR_HOST)."""
    url = store.url(bucket="no-such-bucket")
    flags = ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "serve", "--model-repository", url, *flags],
        capture_output=True,
        text=True,
        env={**os.environ, **store.endpoint_env},
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"model_repository {url}: not found" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_s3_repository_with_worker_processes_sharing_the_cache(s3: Store, tmp_path: Path) -> None:
    """serve --workers 2: both processes mirror into one cache folder; each serves the new
    version once it is uploaded."""
    upload_model(s3, "adder", 1, 1)
    config = serve_config(tmp_path, s3)
    with ServerProcess(["-c", str(config), "--workers", "2"], env=s3.env) as server:
        assert infer(server, "adder") == (200, 1.0)
        upload_model(s3, "adder", 2, 2)
        # New connections land on either process (SO_REUSEPORT): all must answer 2.
        wait_for(
            lambda: all(infer(server, "adder") == (200, 2.0) for _ in range(20)),
            "version 2 served by every worker",
        )
        assert "Traceback" not in server.output()
    cache = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == [".dli-remote.json", "adder"]


def test_config_reload_to_another_prefix_follows_it(s3: Store, tmp_path: Path) -> None:
    """The config file names another prefix while serving: its models load, and the
    repository poll follows the new mirror (a version uploaded there loads), not the old one.
    (Models of the old repository stay loaded, as for a local model_repository changed.)"""
    upload_model(s3, "adder", 1, 1)
    upload_model(s3, "fresh", 1, 9, prefix="other")
    config = serve_config(tmp_path, s3)
    with ServerProcess(["-c", str(config)], env=s3.env) as server:
        assert infer(server, "adder") == (200, 1.0)
        text = config.read_text()
        config.write_text(text.replace("s3://models-bucket/models", "s3://models-bucket/other"))
        wait_for(lambda: infer(server, "fresh") == (200, 9.0), "the new prefix served")
        s3.put("other/fresh/2/model.py", ADD % 10)
        wait_for(lambda: infer(server, "fresh") == (200, 10.0), "a version under the new prefix")


def test_check_config_names_the_url_and_the_models(s3: Store, tmp_path: Path) -> None:
    upload_model(s3, "adder", 1, 1)
    config = serve_config(tmp_path, s3)
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **s3.env},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"model repository: s3://models-bucket/models, cached in {tmp_path / 'cache'}" in (
        done.stdout
    )
    assert "model adder: backend python, version(s) 1" in done.stdout
