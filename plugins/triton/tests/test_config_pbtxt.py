"""config.pbtxt -> the kernel's model configuration: each field, and the errors.

The kernel reads config.pbtxt (dl_inference.kernel.config.triton_config); the tests live
with the plugin that serves Triton repositories. Each folder is written as a user would
write it, and read through the repository scan, as ``serve`` reads it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import dl_inference
from dl_inference import ConfigError, PluginError
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import ModelSource, scan_repository

ADD_SUB = """
    name: "add_sub"
    backend: "python"
    max_batch_size: 8
    input [
      { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
      { name: "INPUT1" data_type: TYPE_STRING dims: [ -1, 2 ] }
    ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 4 ] } ]
"""


def write(root: Path, text: str, name: str = "add_sub", versions: tuple[int, ...] = (1,)) -> Path:
    folder = root / name
    for version in versions:
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / str(version) / "model.py").write_text("class TritonPythonModel: pass\n")
    (folder / "config.pbtxt").write_text(textwrap.dedent(text))
    return folder


def source(root: Path, text: str, name: str = "add_sub", **overrides: object) -> ModelSource:
    write(root, text, name)
    (found,) = scan_repository(root, {name: overrides} if overrides else None)
    return found


def error(root: Path, text: str, name: str = "add_sub") -> str:
    write(root, text, name)
    with pytest.raises(ConfigError) as info:
        scan_repository(root)
    return str(info.value)


def test_tensors_batching_and_backend(tmp_path: Path) -> None:
    found = source(tmp_path, ADD_SUB)
    config = found.config
    assert found.triton_names == ("python",)
    assert config.backend is None  # chosen by the backends' claims, not by name
    assert config.max_batch_size == 8
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [
        ("INPUT0", "FP32", [4]),
        ("INPUT1", "BYTES", [-1, 2]),
    ]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs or []] == [
        ("OUTPUT0", "INT64", [4])
    ]
    # No dynamic_batching block: Triton runs each request alone, and so does the kernel.
    assert config.dynamic_batching is False
    assert config.instances == 1


def test_dynamic_batching_instances_parameters(tmp_path: Path) -> None:
    config = source(
        tmp_path,
        ADD_SUB
        + """
    dynamic_batching {
      preferred_batch_size: [ 4, 8 ]
      max_queue_delay_microseconds: 2500
      default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 300000 }
    }
    instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_CPU } ]
    parameters [
      { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env" } },
      { key: "threshold" value: { string_value: "0.5" } }
    ]
    """,
    ).config
    assert config.dynamic_batching is True
    assert config.max_queue_delay_ms == 2.5
    assert config.preferred_batch_sizes == [4, 8]
    assert config.max_queue_size == 16
    assert config.timeout_ms == 300.0
    assert config.instances == 3  # 2 + a group without count (Triton's default: 1)
    assert config.backend_options == {"device": "cpu"}
    assert config.parameters == {
        "EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env",
        "threshold": "0.5",
    }


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [3]),
        ("version_policy: { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all { } }", [1, 2, 3]),
        ("version_policy: { specific { versions: [ 1, 3 ] } }", [1, 3]),
    ],
)
def test_version_policy(tmp_path: Path, policy: str, served: list[int]) -> None:
    assert source(tmp_path, ADD_SUB + policy).config.version_policy.select([1, 2, 3]) == served


def test_gpu_group_sets_the_device(tmp_path: Path) -> None:
    text = ADD_SUB + "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 1 ] } ]"
    assert source(tmp_path, text).config.backend_options == {"device": "cuda:1"}


def test_server_overrides_win(tmp_path: Path) -> None:
    config = source(tmp_path, ADD_SUB, max_batch_size=4, instances=2).config
    assert (config.max_batch_size, config.instances) == (4, 2)


def test_config_yaml_wins_over_config_pbtxt(tmp_path: Path) -> None:
    folder = write(tmp_path, ADD_SUB)
    (folder / "config.yaml").write_text("max_batch_size: 2\n")
    (found,) = scan_repository(tmp_path)
    assert found.triton_names == ()
    assert found.config.max_batch_size == 2


def test_empty_name_is_the_folder(tmp_path: Path) -> None:
    found = source(tmp_path, ADD_SUB.replace('name: "add_sub"', ""))
    assert found.name == "add_sub"
    assert dl_inference.read_config_pbtxt(found.path)["name"] == "add_sub"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("sequence_batching { }", "sequence_batching"),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy"),
        ("optimization { priority: PRIORITY_MAX }", "optimization"),
        ("response_cache { enable: true }", "response_cache"),
        ('batch_input [ { target_name: "b" } ]', "batch_input"),
        ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels"),
        (
            "dynamic_batching { default_queue_policy { timeout_action: DELAY } }",
            "dynamic_batching.default_queue_policy.timeout_action DELAY",
        ),
        ("instance_group [ { rate_limiter { priority: 1 } } ]", "instance_group[0].rate_limiter"),
    ],
)
def test_unsupported_fields_are_named(tmp_path: Path, extra: str, field: str) -> None:
    message = error(tmp_path, ADD_SUB + extra)
    assert "config.pbtxt" in message
    assert f"{field} is not supported" in message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("dims: [ 4 ] }", "dims: [ 4 ] is_shape_tensor: true }", "input[0].is_shape_tensor"),
        ("dims: [ 4 ] }", "dims: [ 4 ] allow_ragged_batch: true }", "input[0].allow_ragged_batch"),
    ],
)
def test_unsupported_tensor_fields_are_named(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    assert f"{field} is not supported" in error(tmp_path, ADD_SUB.replace(old, new, 1))


def test_reshape_and_optional(tmp_path: Path) -> None:
    text = ADD_SUB.replace(
        "dims: [ 4 ] }", "dims: [ 4 ] reshape: { shape: [ 2, 2 ] } optional: true }", 1
    ).replace("dims: [ 4 ] } ]", "dims: [ 4 ] reshape: { shape: [ 1, 4 ] } } ]")
    config = source(tmp_path, text).config
    inputs, outputs = config.inputs or [], config.outputs or []
    assert [(t.name, t.shape, t.reshape, t.optional) for t in inputs] == [
        ("INPUT0", [4], [2, 2], True),
        ("INPUT1", [-1, 2], None, False),
    ]
    assert [(t.shape, t.reshape, t.optional) for t in outputs] == [([4], [1, 4], False)]


def test_reshape_to_a_scalar(tmp_path: Path) -> None:
    # Triton's way to hand a batching model [batch] for a [batch, 1] request: reshape [].
    text = ADD_SUB.replace("dims: [ 4 ] }", "dims: [ 1 ] reshape: { shape: [ ] } }", 1)
    (first, _) = source(tmp_path, text).config.inputs or []
    assert (first.shape, first.reshape) == ([1], [])


@pytest.mark.parametrize(
    ("dims", "reshape"),
    [
        ("[ 4 ]", "[ 3 ]"),
        ("[ 4 ]", "[ -1, 2 ]"),
        ("[ -1, 4 ]", "[ 4, -1 ]"),
        ("[ 2, -1 ]", "[ -1, 2 ]"),
    ],
)
def test_reshape_must_keep_the_elements(tmp_path: Path, dims: str, reshape: str) -> None:
    """Each refused by Triton 2.51 too ("has different size for dims and reshape")."""
    text = ADD_SUB.replace("dims: [ 4 ] }", f"dims: {dims} reshape: {{ shape: {reshape} }} }}", 1)
    message = error(tmp_path, text)
    assert "inputs[0]" in message
    assert "does not hold the elements of shape" in message


def test_reshape_keeps_variable_dimensions(tmp_path: Path) -> None:
    text = ADD_SUB.replace("dims: [ 4 ] }", "dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } }", 1)
    (first, _) = source(tmp_path, text).config.inputs or []
    assert (first.shape, first.reshape) == ([-1, 4], [-1, 2, 2])


def test_optional_is_for_inputs_only(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text(
        "backend: python\noutputs: [{name: y, datatype: FP32, shape: [1], optional: true}]\n"
    )
    with pytest.raises(ConfigError, match="optional applies to inputs only"):
        scan_repository(tmp_path)


def test_model_warmup(tmp_path: Path) -> None:
    text = (
        ADD_SUB
        + """
    model_warmup [
      { name: "zeros" batch_size: 2 count: 3
        inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
        inputs { key: "INPUT1" value: { data_type: TYPE_STRING dims: [ 1, 2 ] random_data: true } }
      },
      { name: "defaults" }
    ]
    """
    )
    warmup = source(tmp_path, text).config.warmup
    assert [(w.name, w.batch_size, w.count) for w in warmup] == [
        ("zeros", 2, 3),
        ("defaults", 1, 1),  # Triton's count 0 / batch_size 0: once, one row
    ]
    inputs = warmup[0].inputs or {}
    assert (inputs["INPUT0"].datatype, inputs["INPUT0"].shape, inputs["INPUT0"].zero_data) == (
        "FP32",
        [4],
        True,
    )
    assert (inputs["INPUT1"].datatype, inputs["INPUT1"].random_data) == ("BYTES", True)
    assert warmup[1].inputs is None  # zeros for every declared input


def test_model_warmup_files_are_refused(tmp_path: Path) -> None:
    text = (
        ADD_SUB
        + """
    model_warmup [ { name: "w" batch_size: 1 inputs {
      key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "raw" } } } ]
    """
    )
    message = error(tmp_path, text)
    assert "model_warmup[0].inputs[INPUT0]: input_data_file is not supported" in message


def test_decoupled_false_spelled_out_is_fine(tmp_path: Path) -> None:
    text = ADD_SUB + "model_transaction_policy { decoupled: false }"
    assert source(tmp_path, text).config.max_batch_size == 8


def test_parse_errors_give_line_and_column(tmp_path: Path) -> None:
    message = error(tmp_path, ADD_SUB + "max_batch_sise: 4\n")
    assert "not a valid config.pbtxt at line 10, column 1" in message
    assert "max_batch_sise" in message
    message = error(tmp_path, 'name: "add_sub"\nbackend: "python"\ninput [ { name: "x" ')
    assert "not a valid config.pbtxt at line 3" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ADD_SUB.replace('name: "add_sub"', 'name: "other"'), "differs from the model's folder"),
        (ADD_SUB.replace('backend: "python"', ""), "neither backend nor platform"),
        (ADD_SUB.replace("data_type: TYPE_FP32 ", ""), "data_type is missing"),
        (ADD_SUB.replace("TYPE_FP32", "TYPE_BF16"), "TYPE_BF16 is not supported"),
        (
            ADD_SUB + "instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]",
            "groups of different kinds",
        ),
        (ADD_SUB + "instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]", "one GPU per model"),
        (ADD_SUB.replace("max_batch_size: 8", "max_batch_size: -1"), "max_batch_size"),
        (
            ADD_SUB + "dynamic_batching { preferred_batch_size: [ 4, 16 ] }",
            "preferred_batch_sizes: 16 is not between 1 and max_batch_size (8)",
        ),
    ],
)
def test_invalid_configs(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error(tmp_path, text)


def test_model_config_document_is_triton_json(tmp_path: Path) -> None:
    folder = write(tmp_path, ADD_SUB + "dynamic_batching { max_queue_delay_microseconds: 100 }")
    document = dl_inference.read_config_pbtxt(folder)
    assert document["input"][0]["dims"] == [4]  # numbers, not protobuf JSON's strings
    assert document["input"][1]["data_type"] == "TYPE_STRING"
    assert document["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert document["max_batch_size"] == 8
    assert document["backend"] == "python"
    json.dumps(document)


def test_backend_chosen_by_its_claim(tmp_path: Path) -> None:
    host = PluginHost().load()
    write(tmp_path, ADD_SUB)
    registry = ModelRegistry(host)
    registry.prepare(scan_repository(tmp_path))
    assert registry.versions("add_sub")[0].backend_name == "triton_python"


def test_unclaimed_platform_says_what_to_install(tmp_path: Path) -> None:
    write(tmp_path, ADD_SUB.replace('backend: "python"', 'platform: "tensorrt_plan"'))
    with pytest.raises(PluginError, match="no installed backend serves Triton's 'tensorrt_plan'"):
        ModelRegistry(PluginHost().load()).prepare(scan_repository(tmp_path))
    # Without the plugin, Triton's python backend names the plugin to install.
    write(tmp_path, ADD_SUB)
    with pytest.raises(PluginError, match=r"pip install \./plugins/triton"):
        ModelRegistry(PluginHost(entry_points=[]).load()).prepare(scan_repository(tmp_path))
