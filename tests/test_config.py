"""Server YAML and per-model config validation: every problem names its path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from dl_inference.kernel.config import load_server_config, parse_server_config
from dl_inference.kernel.config.model_config import VersionPolicy
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.spi.errors import ConfigError
from dl_inference.testing import write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""


def test_defaults_match_the_documented_ports() -> None:
    config = parse_server_config({})
    assert (config.server.grpc.port, config.server.http.port) == (8500, 8501)
    assert config.server.grpc.max_message_mb == 64


def test_unknown_key_names_the_path_and_suggests_the_right_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_server_config({"server": {"grpc": {"prot": 9000}}})
    assert "server.grpc.prot: unknown key (did you mean port?)" in str(info.value)


def test_wrong_type_names_the_path_and_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_server_config({"server": {"http": {"port": "eighty"}}})
    assert "server.http.port" in str(info.value)
    assert "'eighty'" in str(info.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_server_config({"server": {"grpc": {"port": -1}}, "modle_repository": "x"})
    message = str(info.value)
    assert "server.grpc.port" in message
    assert "modle_repository: unknown key (did you mean model_repository?)" in message


def test_broken_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("server:\n  grpc: {port: 1\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    assert "not valid YAML at line" in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_server_config(path)


def test_relative_model_repository_resolves_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "server.yaml"
    path.write_text("model_repository: ../models\n")
    assert load_server_config(path).model_repository == (tmp_path / "models").resolve()


def test_model_config_typo_suggests_the_kernel_key(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", ADD_ONE, "max_batch_sise: 4\n")
    host = PluginHost(entry_points=[]).load()
    registry = ModelRegistry(host)
    with pytest.raises(ConfigError) as info:
        registry.prepare(scan_repository(tmp_path))
    assert "max_batch_sise: unknown key (did you mean max_batch_size?)" in str(info.value)


def test_unknown_datatype_in_model_config(tmp_path: Path) -> None:
    write_python_model(
        tmp_path, "m", ADD_ONE, "inputs: [{name: x, datatype: FLOAT32, shape: [3]}]\n"
    )
    with pytest.raises(ConfigError) as info:
        scan_repository(tmp_path)
    assert "unknown datatype 'FLOAT32'" in str(info.value)
    assert "FP32" in str(info.value)


def test_override_for_a_model_not_in_the_repository(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", ADD_ONE)
    with pytest.raises(ConfigError, match=r"models\.mnsit: no such model"):
        scan_repository(tmp_path, {"mnsit": {"max_batch_size": 2}})


def test_backend_missing_names_the_pip_package(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", ADD_ONE, "backend: pytorch\n")
    host = PluginHost(entry_points=[]).load()
    with pytest.raises(Exception) as info:
        ModelRegistry(host).prepare(scan_repository(tmp_path))
    assert "pip install dl-inference-pytorch" in str(info.value)


def test_unrecognised_files_ask_for_a_backend(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "weights.bin").write_bytes(b"\0")
    host = PluginHost(entry_points=[]).load()
    with pytest.raises(ConfigError) as info:
        ModelRegistry(host).prepare(scan_repository(tmp_path))
    assert "no installed backend recognises" in str(info.value)
    assert "weights.bin" in str(info.value)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, [3]),
        ({"latest": 2}, [2, 3]),
        ({"all": True}, [1, 2, 3]),
        ({"specific": [1, 3]}, [1, 3]),
    ],
)
def test_version_policy(policy: dict, expected: list[int]) -> None:
    assert VersionPolicy(**policy).select([3, 1, 2]) == expected


def test_version_policy_allows_one_choice() -> None:
    with pytest.raises(ValueError, match="one of latest, all, specific"):
        VersionPolicy(latest=1, all=True)
