"""TF Serving's ``--model_config_file`` and ``--batching_parameters_file`` as this plugin reads
them, and what stops ``dl-inference serve`` when they cannot be served: each error names the
file, the line and the field. No TensorFlow is needed (the serving itself, with SavedModels
and TF Serving's client, is plugins/tensorflow/tests/test_tf_model_config_file.py).

No TF Serving binary can run here: what TF Serving accepts is taken from its published
messages (``tensorflow_serving.config.model_server_config_pb2``, TF Serving's own module,
where it is installed) and its documentation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dl_inference import ConfigError
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.model_server_config import (
    ModelConfigFile,
    read_batching_parameters,
    read_model_config_file,
)

GOOD = """\
model_config_list {
  config {
    name: 'a'
    base_path: '%(base)s/a'
    model_platform: 'tensorflow'
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: 'stable' value: 1 }
  }
}
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "a" / "2").mkdir()
    (tmp_path / "repo").mkdir()
    return tmp_path


def serve(
    base: Path, models: str, batching: str | None = None, settings: str = ""
) -> subprocess.CompletedProcess:
    """``dl-inference serve`` given the files (and more ``plugin_settings.tfserving`` lines);
    they are expected to stop it at start-up."""
    (base / "models.config").write_text(models % {"base": base})
    settings = "    model_config_file: models.config\n" + settings
    if batching is not None:
        (base / "batching.config").write_text(batching)
        settings += "    batching_parameters_file: batching.config\n"
    (base / "server.yaml").write_text(
        "model_repository: repo\nplugin_settings:\n  tfserving:\n" + settings
    )
    command = [sys.executable, "-m", "dl_inference", "serve", "-c", "server.yaml"]
    command += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
    return subprocess.run(
        command, cwd=base, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_models_and_their_settings(base: Path) -> None:
    (base / "models.config").write_text(GOOD % {"base": base})
    (base / "batching.config").write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
        "num_batch_threads { value: 4 }\nmax_enqueued_batches { value: 3 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\n"
    )
    batching = read_batching_parameters(base / "batching.config")
    assert batching == {
        "max_batch_size": 16,
        "max_queue_delay_ms": 0.5,
        "max_queue_size": 48,
        "instances": 4,
        "preferred_batch_sizes": [4, 16],
    }
    (model,) = read_model_config_file(base / "models.config", batching)
    assert (model.name, model.base_path) == ("a", base / "a")
    assert model.config == {
        "backend": "tensorflow",
        **batching,
        "version_policy": {"latest": 2},
        "version_labels": {"stable": 1},
    }


def test_the_model_folder_links_each_version_and_follows_the_base_path(base: Path) -> None:
    """A new version folder gets its link at the next scan, a removed one loses it; the
    files of an unchanged model are not rewritten (the kernel's poll sees no change)."""
    (base / "models.config").write_text(GOOD % {"base": base})
    models = ModelConfigFile(base / "models.config")
    ((name, folder),) = models.models()
    assert name == "a"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.yaml"]
    assert (folder / "2").resolve() == (base / "a" / "2").resolve()
    stamp = (folder / "config.yaml").stat().st_mtime_ns
    (base / "a" / "3").mkdir()
    (base / "a" / "1").rmdir()
    assert models.models() == [("a", folder)]
    assert sorted(p.name for p in folder.iterdir()) == ["2", "3", "config.yaml"]
    assert (folder / "config.yaml").stat().st_mtime_ns == stamp


def test_our_messages_read_tf_servings_bytes(base: Path) -> None:
    """Same field numbers as TF Serving's own ModelServerConfig: its bytes parse here."""
    theirs_module = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    theirs = theirs_module.ModelServerConfig()
    config = theirs.model_config_list.config.add(
        name="a", base_path="/m/a", model_platform="tensorflow"
    )
    config.model_version_policy.specific.versions.extend([1, 3])
    config.version_labels["stable"] = 3
    ours = tfs_pb2.ModelServerConfig.FromString(theirs.SerializeToString())
    (read,) = ours.model_config_list.config
    assert (read.name, read.base_path, read.model_platform) == ("a", "/m/a", "tensorflow")
    assert list(read.model_version_policy.specific.versions) == [1, 3]
    assert dict(read.version_labels) == {"stable": 3}
    assert ours.SerializeToString() == theirs.SerializeToString()  # nothing left unknown


LIST_SYNTAX = """\
model_config_list: {
  config: [{
    name: "a", base_path: "%(base)s/a"
  }, {
    name: "b",
    # a comment with base_path: in it
    base_path: "b"
  }]
}
"""

ERRORS = {
    "relative base_path": (
        GOOD.replace("%(base)s/a", "a"),
        None,
        "models.config:4: model_config_list.config[0].base_path: 'a' is relative",
    ),
    "remote base_path": (
        GOOD.replace("%(base)s/a", "s3://bucket/a"),
        None,
        "models.config:4: model_config_list.config[0].base_path: 's3://bucket/a': remote",
    ),
    "missing folder": (
        GOOD.replace("%(base)s/a", "%(base)s/gone"),
        None,
        "models.config:4: model_config_list.config[0].base_path: ",
    ),
    "unknown field": (
        GOOD.replace("base_path", "base_paht"),
        None,
        'models.config:4:5: Message type "ModelConfig" has no field named "base_paht"',
    ),
    "request logging": (
        GOOD.replace("model_platform: 'tensorflow'", "logging_config { }"),
        None,
        'models.config:5:5: Message type "ModelConfig" has no field named "logging_config". '
        "(request logging is not supported",
    ),
    "another platform": (
        GOOD.replace("'tensorflow'", "'onnx'"),
        None,
        "models.config:5: model_config_list.config[0].model_platform: model_platform 'onnx'",
    ),
    "a name twice": (
        GOOD[: GOOD.rindex("}")] + "  config { name: 'a' base_path: '%(base)s/a' }\n}\n",
        None,
        "models.config:9: model_config_list.config[1].name: 'a' is named twice",
    ),
    "list syntax, second entry": (
        LIST_SYNTAX,
        None,
        "models.config:7: model_config_list.config[1].base_path: 'b' is relative",
    ),
    "padding": (
        GOOD,
        "max_batch_size { value: 8 }\npad_variable_length_inputs: true\n",
        "batching.config:2: pad_variable_length_inputs: not supported",
    ),
    "allowed sizes": (
        GOOD,
        "max_batch_size { value: 8 }\nallowed_batch_sizes: [2, 4]\n",
        "batching.config:2: allowed_batch_sizes: the last entry (4) must equal max_batch_size (8)",
    ),
    "a bad value after comments": (
        GOOD,
        "# TF Serving's batching\nmax_batch_size { value: 8 }  # rows\n"
        "num_batch_threads { value: 2 }\nbatch_timeout_micros {\n  value: -5\n}\n",
        "batching.config:4: batch_timeout_micros: -5 must not be negative",
    ),
    "no max_batch_size": (
        GOOD,
        "batch_timeout_micros { value: 8 }\n",
        "batching.config: max_batch_size: required here",
    ),
    "unknown batching field": (
        GOOD,
        "max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\n",
        'batching.config:2:1: Message type "BatchingParameters" has no field named '
        '"enable_large_batch_splitting"',
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_what_cannot_be_served_stops_the_server(base: Path, case: str) -> None:
    models, batching, message = ERRORS[case]
    result = serve(base, models, batching)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "given",
    [
        {"batching_parameters_file": "batching.config"},
        {"enable_per_model_batching_parameters": True},
    ],
)
def test_batching_parameters_need_the_model_config_file(given: dict[str, object]) -> None:
    from dl_inference_tfserving.settings import model_config_file, parse_settings

    key = next(iter(given))
    with pytest.raises(ConfigError, match=f"tfserving.{key}: applies to the models of"):
        model_config_file(parse_settings(given))


def served_config(folder: Path) -> dict[str, object]:
    return yaml.safe_load((folder / "config.yaml").read_text())


BATCHING_KEYS = ("max_batch_size", "max_queue_delay_ms", "instances", "preferred_batch_sizes")


def test_per_model_batching_parameters(base: Path) -> None:
    """TF Serving's --enable_per_model_batching_parameters: a model is batched with the
    batching_params.pbtxt of the newest version it serves (what TF Serving loads last),
    only the common file's thread count kept; without the file, not batched."""
    for folder in ("b/1", "b/2", "c/1"):
        (base / folder).mkdir(parents=True)
    more = (
        "  config { name: 'b' base_path: '%(base)s/b'\n"
        "           model_version_policy { specific { versions: 1 } } }\n"
        "  config { name: 'c' base_path: '%(base)s/c' }\n}"
    )
    (base / "models.config").write_text(GOOD.replace("  }\n}", "  }\n" + more) % {"base": base})
    (base / "batching.config").write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 9000 }\n"
        "num_batch_threads { value: 2 }\n"
    )
    (base / "a" / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 4 }\n")
    (base / "a" / "2" / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
        "num_batch_threads { value: 0 }\n"  # not read from a per-model file, as in TF Serving
    )
    (base / "b" / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 6 }\n")
    (base / "b" / "2" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }\n")
    models = ModelConfigFile(
        base / "models.config", base / "batching.config", per_model_batching=True
    )
    folders = dict(models.models())
    assert list(folders) == ["a", "b", "c"]
    batching_of_a = {k: v for k, v in served_config(folders["a"]).items() if k in BATCHING_KEYS}
    assert batching_of_a == {"max_batch_size": 8, "max_queue_delay_ms": 1.0, "instances": 2}
    assert served_config(folders["b"])["max_batch_size"] == 6  # 2 is on disk, not served
    assert not set(served_config(folders["c"])) & set(BATCHING_KEYS)

    # A new version brings its own parameters; one that does not read keeps the last ones.
    (base / "a" / "3").mkdir()
    (base / "a" / "3" / "batching_params.pbtxt").write_text("max_batch_size { value: 16 }\n")
    models.models()
    assert served_config(folders["a"])["max_batch_size"] == 16
    (base / "a" / "3" / "batching_params.pbtxt").write_text("max_batch_size { value: 0 }\n")
    assert [name for name, _ in models.models()] == ["a", "b", "c"]
    assert served_config(folders["a"])["max_batch_size"] == 16

    # Without the flag the common file applies to every model, as before.
    common = ModelConfigFile(base / "models.config", base / "batching.config")
    for _, folder in common.models():
        assert served_config(folder)["max_batch_size"] == 32


def test_a_per_model_batching_file_that_does_not_read_stops_the_server(base: Path) -> None:
    (base / "a" / "2" / "batching_params.pbtxt").write_text(
        "# the newest version's\nmax_batch_size { value: 0 }\n"
    )
    result = serve(base, GOOD, settings="    enable_per_model_batching_parameters: true\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "a/2/batching_params.pbtxt:2: max_batch_size: 0 must be at least 1" in result.stderr


def test_relative_paths_are_taken_from_the_server_yamls_folder(
    base: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``model_repository`` in the server YAML: the config_dir the kernel hands over (the
    YAML's folder), not the working directory."""
    from dl_inference_tfserving import settings

    (base / "models.config").write_text(GOOD % {"base": base})
    (base / "batching.config").write_text("max_batch_size { value: 8 }\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    given = {"model_config_file": "models.config", "batching_parameters_file": "batching.config"}
    try:
        settings.configure(given, base)
        assert [name for name, _ in settings.configured_models()] == ["a"]
        with pytest.raises(ConfigError, match="cannot be read"):
            settings.configure(given)  # no folder given: the working directory's
    finally:
        settings.configure({})
