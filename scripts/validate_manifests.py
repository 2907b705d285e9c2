"""Render deploy/k8s's kustomize overlays and check every object before it reaches a cluster.

    python scripts/validate_manifests.py [--kubernetes-version 1.31] [--renderer auto]

It checks deploy/kserve's KServe objects too (:func:`check_kserve`): against KServe's API
schema as its Python SDK (the ``kserve`` package) carries it, the Kubernetes types they
embed as the ``kubernetes`` client's models carry them, and KServe's runtime selection.

Three layers of checks, each printing what is wrong and where:

1. Rendering: ``kubectl kustomize`` when kubectl is on PATH (it embeds kustomize), else
   the small loader below (:func:`build_kustomization`), which implements exactly the
   kustomize features deploy/k8s uses. tests/deploy compares the two whenever kubectl
   is there, so the loader cannot drift from real kustomize unnoticed.
2. Schema: every object against the JSON schema of the pinned Kubernetes version, in
   strict mode (unknown fields are errors), with the ``kubernetes-validate`` package.
3. dl-inference's own rules (:func:`project_errors`): worker Services are headless,
   probes are gRPC health on 8500, every container has requests and limits, each worker
   group has its Service, PodDisruptionBudget and HPA, the config files in the ConfigMaps
   are valid dl-inference configs, and the gateway's DNS names point at those Services.

Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
OVERLAYS = K8S / "overlays"
# The oldest Kubernetes release the manifests promise to work on: gRPC probes are GA since
# 1.27, unhealthyPodEvictionPolicy since 1.31.
KUBERNETES_VERSION = "1.31"
GRPC_PORT = 8500
# The numeric user of the images (deploy/docker/*.Dockerfile: USER 10001:10001).
IMAGE_UID = 10001
CLUSTER_DOMAIN = "svc.cluster.local"

Obj = dict[str, Any]


# -- rendering -----------------------------------------------------------------------------


def render(path: Path, renderer: str = "auto") -> list[Obj]:
    """The objects of the kustomization in ``path``.

    ``renderer``: ``kubectl`` (``kubectl kustomize``), ``loader`` (:func:`build_kustomization`)
    or ``auto`` (kubectl when it is on PATH).
    """
    if renderer == "kubectl" or (renderer == "auto" and shutil.which("kubectl")):
        return render_with_kubectl(path)
    return build_kustomization(path)


def render_with_kubectl(path: Path) -> list[Obj]:
    """``kubectl kustomize PATH``, parsed; RuntimeError with kustomize's message on failure."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def build_kustomization(path: Path) -> list[Obj]:
    """Render a kustomization with the subset of kustomize that deploy/k8s uses.

    Supported fields: ``resources`` (YAML files, or folders holding a kustomization),
    ``namespace``, ``configMapGenerator`` (``files`` only; names get kustomize's content
    hash suffix and references from pod volumes follow), ``images`` (``newName`` /
    ``newTag``) and ``patches`` given as ``path`` to a strategic-merge patch (maps merge,
    lists of maps with ``name`` merge by name, other lists are replaced). Anything else is
    refused with a ValueError rather than silently ignored.
    """
    objects, renames = _build(path.resolve())
    for obj in objects:
        _rename_config_map_refs(obj, renames)
    return objects


_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator", "images",
              "patches"}


def _build(path: Path) -> tuple[list[Obj], dict[tuple[str, str], str]]:
    kustomization_file = path / "kustomization.yaml"
    spec = yaml.safe_load(kustomization_file.read_text(encoding="utf-8")) or {}
    unsupported = sorted(set(spec) - _SUPPORTED)
    if unsupported:
        raise ValueError(
            f"{kustomization_file}: {', '.join(unsupported)} not supported by this loader; "
            "render with kubectl kustomize or extend scripts/validate_manifests.py"
        )
    objects: list[Obj] = []
    # (namespace, original name) -> generated name; namespace "" until one is set.
    renames: dict[tuple[str, str], str] = {}
    for entry in spec.get("resources", []):
        target = (path / entry).resolve()
        if target.is_dir():
            sub_objects, sub_renames = _build(target)
            objects += sub_objects
            renames.update(sub_renames)
        else:
            text = target.read_text(encoding="utf-8")
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    for generator in spec.get("configMapGenerator", []):
        extra = sorted(set(generator) - {"name", "files"})
        if extra:
            raise ValueError(f"{kustomization_file}: configMapGenerator {', '.join(extra)} "
                             "not supported by this loader")
        data = {}
        for item in generator["files"]:
            key, sep, source = item.partition("=")
            file = path / (source if sep else key)
            data[Path(key).name if not sep else key] = file.read_text(encoding="utf-8")
        name = f"{generator['name']}-{config_map_hash(data)}"
        renames[("", generator["name"])] = name
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                        "data": data})
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{kustomization_file}: only patches given by path are supported")
        _apply_patch(objects, yaml.safe_load((path / patch["path"]).read_text(encoding="utf-8")))
    for image in spec.get("images", []):
        _set_image(objects, image)
    namespace = spec.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = namespace
        renames = {(ns or namespace, old): new for (ns, old), new in renames.items()}
    return objects, renames


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a generated ConfigMap holding ``data``.

    kustomize hashes the JSON of ``{"data", "kind", "name": ""}`` as Go's encoding/json
    writes it (sorted keys, HTML characters escaped), takes 10 hex digits of its SHA-256
    and swaps 0, 1, 3, a, e for g, h, k, m, t so the suffix never reads as a number or word.
    """
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""},
                         separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escaped)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_config_map_refs(obj: Obj, renames: dict[tuple[str, str], str]) -> None:
    namespace = obj["metadata"].get("namespace", "")
    for volume in pod_spec(obj).get("volumes", []) if pod_spec(obj) else []:
        ref = volume.get("configMap")
        if ref and (namespace, ref["name"]) in renames:
            ref["name"] = renames[(namespace, ref["name"])]


def _apply_patch(objects: list[Obj], patch: Obj) -> None:
    for obj in objects:
        if obj["kind"] == patch["kind"] and obj["metadata"]["name"] == patch["metadata"]["name"]:
            merged = strategic_merge(obj, {k: v for k, v in patch.items() if k != "metadata"})
            obj.clear()
            obj.update(merged)
            return
    raise ValueError(f"patch for {patch['kind']}/{patch['metadata']['name']}: no such object")


def strategic_merge(base: Any, patch: Any) -> Any:
    """The subset of strategic merge patch used here (see :func:`build_kustomization`)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        merged = copy.deepcopy(base)
        for item in patch:
            for index, existing in enumerate(merged):
                if existing["name"] == item["name"]:
                    merged[index] = strategic_merge(existing, item)
                    break
            else:
                merged.append(item)
        return merged
    return copy.deepcopy(patch)


def _set_image(objects: list[Obj], image: Obj) -> None:
    for obj in objects:
        for container in containers(obj):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/a/b:tag`` -> (``registry:5000/a/b``, ``tag``); no tag -> ``latest``."""
    slash = image.rfind("/")
    name, sep, tag = image.rpartition(":")
    if not sep or name.rfind("/") != slash:
        return image, "latest"
    return name, tag


# -- schema --------------------------------------------------------------------------------


def schema_errors(objects: Iterable[Obj], version: str = KUBERNETES_VERSION) -> list[str]:
    """Every object against Kubernetes ``version``'s strict JSON schema; one line per fault."""
    import kubernetes_validate  # a test dependency: imported here so --help works without it

    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(top level)"
            errors.append(f"{describe(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{describe(obj)}: {exc.message}")
    return errors


# -- dl-inference's rules ------------------------------------------------------------------


def describe(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')}/{namespace}{meta.get('name')}"


def pod_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    return spec.get("containers", []) if spec else []


def component(obj: Obj) -> str | None:
    return obj["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def mounted_config(obj: Obj, objects: list[Obj], container: Obj) -> tuple[Obj, Path] | None:
    """(ConfigMap, file path) of the ``-c FILE`` a dl-inference container is started with."""
    args = container.get("args", [])
    if "-c" not in args:
        return None
    config_path = Path(args[args.index("-c") + 1])
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if config_path.parent == Path(mount["mountPath"]):
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                return None
            for cm in objects:
                if (cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == source["name"]
                        and cm["metadata"].get("namespace") == obj["metadata"].get("namespace")):
                    return cm, config_path
    return None


def resource_errors(where: str, container: Obj) -> list[str]:
    """A container must request and limit both CPU and memory (the scheduler and the HPA
    need the requests; the limits keep one model from starving its neighbours)."""
    resources = container.get("resources", {})
    return [f"{where}: resources.{kind} lacks {', '.join(sorted(missing))}"
            for kind in ("requests", "limits")
            if (missing := {"cpu", "memory"} - set(resources.get(kind, {})))]


def project_errors(objects: list[Obj]) -> list[str]:
    """dl-inference's deployment rules over a rendered overlay; one line per fault."""
    from dl_inference.kernel.config import parse_server_config
    from dl_inference.spi.errors import ConfigError

    errors: list[str] = []
    workloads = [o for o in objects if pod_spec(o) is not None]
    services = [o for o in objects if o["kind"] == "Service"]
    by_kind: dict[str, list[Obj]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    headless: dict[tuple[str, str], Obj] = {}
    gateway_routes: list[tuple[Obj, list[Any]]] = []

    for obj in workloads:
        name, ns = describe(obj), obj["metadata"].get("namespace")
        spec = pod_spec(obj)
        labels = obj["spec"]["template"]["metadata"].get("labels", {})
        security = spec.get("securityContext", {})
        if not security.get("runAsNonRoot") or security.get("runAsUser") != IMAGE_UID:
            errors.append(f"{name}: pod securityContext needs runAsNonRoot: true and "
                          f"runAsUser: {IMAGE_UID} (the images' USER)")
        for container in containers(obj):
            where = f"{name} container {container['name']}"
            errors += resource_errors(where, container)
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if probe is None:
                    if probe_name != "startupProbe":
                        errors.append(f"{where}: no {probe_name}")
                    continue
                grpc = probe.get("grpc")
                if grpc is None or grpc.get("port") != GRPC_PORT:
                    errors.append(f"{where}: {probe_name} must be a grpc probe on port "
                                  f"{GRPC_PORT} (grpc.health.v1), got {probe}")
            if GRPC_PORT not in [p.get("containerPort") for p in container.get("ports", [])]:
                errors.append(f"{where}: no containerPort {GRPC_PORT}")
            found = mounted_config(obj, objects, container)
            if found is None:
                errors.append(f"{where}: started without -c FILE from a mounted ConfigMap")
                continue
            config_map, config_path = found
            text = config_map.get("data", {}).get(config_path.name)
            if text is None:
                errors.append(f"{where}: {describe(config_map)} has no key {config_path.name}")
                continue
            try:
                config = parse_server_config(yaml.safe_load(text) or {}, describe(config_map))
            except ConfigError as exc:
                errors.append(str(exc))
                continue
            if config.server.grpc.port != GRPC_PORT:
                errors.append(f"{describe(config_map)}: server.grpc.port must be {GRPC_PORT}")
            pre_stop = (container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
                        .get("command", []))
            sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= sleep + config.server.drain_timeout_s:
                errors.append(f"{name}: terminationGracePeriodSeconds {grace} leaves no time to "
                              f"drain (preStop sleep {sleep} + drain_timeout_s "
                              f"{config.server.drain_timeout_s})")
            if component(obj) == "worker":
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                if config.model_repository is None or str(config.model_repository) not in mounts:
                    errors.append(f"{describe(config_map)}: model_repository "
                                  f"{config.model_repository} is not a volume mounted in {where}")
            if component(obj) == "gateway":
                if not config.routes:
                    errors.append(f"{describe(config_map)}: a gateway config needs routes")
                gateway_routes.append((obj, config.routes))

        if component(obj) == "worker":
            matching = [s for s in services if s["metadata"].get("namespace") == ns
                        and selects(s["spec"].get("selector"), labels)]
            if not matching:
                errors.append(f"{name}: no Service selects the worker pods")
            for service in matching:
                if service["spec"].get("clusterIP") != "None":
                    errors.append(f"{describe(service)}: a worker Service must be headless "
                                  "(clusterIP: None) so DNS lists every pod to the gateway")
                ports = {p["port"] for p in service["spec"].get("ports", [])}
                if GRPC_PORT not in ports:
                    errors.append(f"{describe(service)}: no port {GRPC_PORT}")
                headless[(service["metadata"]["name"], ns)] = service
            if not any(selects(p["spec"]["selector"].get("matchLabels"), labels)
                       and p["metadata"].get("namespace") == ns
                       for p in by_kind.get("PodDisruptionBudget", [])):
                errors.append(f"{name}: no PodDisruptionBudget covers the worker pods")
            hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", [])
                    if h["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]
                    and h["metadata"].get("namespace") == ns]
            if not hpas:
                errors.append(f"{name}: no HorizontalPodAutoscaler scales the workers")
            elif "replicas" in obj["spec"]:
                errors.append(f"{name}: spec.replicas fights the HPA on every apply; leave it out")

        for volume in spec.get("volumes", []):
            for key, kind in (("configMap", "ConfigMap"),
                              ("persistentVolumeClaim", "PersistentVolumeClaim")):
                ref = volume.get(key)
                ref_name = ref and (ref.get("name") or ref.get("claimName"))
                if ref_name and not any(o["metadata"]["name"] == ref_name
                                        and o["metadata"].get("namespace") == ns
                                        for o in by_kind.get(kind, [])):
                    errors.append(f"{name}: volume {volume['name']} names {kind} {ref_name}, "
                                  "which the overlay does not define")

    for gateway, routes in gateway_routes:
        for route in routes:
            dns = route.discovery.dns if route.discovery else None
            if dns is None:
                continue
            host, _, port = dns.rpartition(":")
            parts = host.split(".", 2)
            if len(parts) < 3 or parts[2] != CLUSTER_DOMAIN:
                errors.append(f"{describe(gateway)} route {route.model}: discovery.dns {dns} "
                              f"should be <service>.<namespace>.{CLUSTER_DOMAIN}:{GRPC_PORT}")
                continue
            service = headless.get((parts[0], parts[1]))
            if service is None:
                errors.append(f"{describe(gateway)} route {route.model}: discovery.dns {dns} "
                              "names no headless worker Service of this overlay")
            elif int(port) not in {p["port"] for p in service["spec"]["ports"]}:
                errors.append(f"{describe(gateway)} route {route.model}: {describe(service)} "
                              f"has no port {port}")
    return errors


# -- KServe ------------------------------------------------------------------------------

# (apiVersion, kind) -> the KServe SDK's model of that resource.
KSERVE_KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
# The ports the runtime serves V2 on: KServe's default HTTP port, and the next for gRPC.
KSERVE_HTTP_PORT, KSERVE_GRPC_PORT = 8080, 8081
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
_PRIMITIVES: dict[str, Any] = {
    "str": str,
    "bool": bool,
    "int": int,
    "float": (int, float),
    "datetime": str,
    "date": str,
    "bytes": str,
    "object": object,
    "ResourceQuantity": (str, int, float),  # Kubernetes' int-or-string quantity
}


def kserve_schema_errors(objects: Iterable[Obj]) -> list[str]:
    """Every object against KServe's API schema, strictly; one line per fault.

    The schema is the one KServe's Python SDK is generated from (its models'
    ``openapi_types``, ``attribute_map`` and required fields), and for the Kubernetes types
    it embeds (containers, probes, metadata) the ``kubernetes`` client's models: unknown
    fields, wrong types and missing required fields are errors.
    """
    errors: list[str] = []
    for obj in objects:
        name = KSERVE_KINDS.get((obj.get("apiVersion"), obj.get("kind")))
        if name is None:
            known = ", ".join(f"{a} {k}" for a, k in KSERVE_KINDS)
            errors.append(f"{describe(obj)}: not a KServe resource checked here ({known})")
            continue
        _check_model(obj, _kserve_model(name), describe(obj), errors)
    return errors


def _kserve_model(name: str) -> Any:
    # Test dependencies (kserve brings the kubernetes client), imported here so that --help
    # works without them.
    import kubernetes.client.models

    kserve_models = _kserve_models()
    found = getattr(kserve_models, name, None) or getattr(kubernetes.client.models, name, None)
    if found is None:
        raise LookupError(f"{name}: neither the kserve nor the kubernetes client has this model")
    return found


def _kserve_models() -> Any:
    """``kserve.models`` (the SDK's generated API types) without running ``kserve/__init__``.

    That one imports KServe's model server, whose V2 protobuf module registers the full
    names (``inference.ServerLiveRequest``, ...) that tritonclient registers too: the two
    cannot be imported into one process, and the tests use tritonclient. The models need
    nothing of the package but ``kserve.configuration``.
    """
    import importlib
    import importlib.util
    import types

    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("kserve is not installed (pip install -e '.[test]')")
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


def _required(model: Any) -> list[str]:
    """The attributes the generated model refuses to leave unset: pydantic's required
    fields (the kubernetes client's models), or those whose setters refuse None (KServe's)."""
    import inspect

    fields = getattr(model, "model_fields", None)
    if fields is not None:
        return [name for name, field in fields.items() if field.is_required()]
    source = inspect.getsource(model)
    return re.findall(r"client_side_validation and (\w+) is None", source)


def _check_model(value: Any, model: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where}: expected an object ({model.__name__}), got {value!r}")
        return
    attributes = {key: attr for attr, key in model.attribute_map.items()}
    for key, item in value.items():
        attr = attributes.get(key)
        if attr is None:
            errors.append(f"{where}.{key}: unknown field of {model.__name__} "
                          f"(fields: {', '.join(sorted(attributes))})")
            continue
        kind = model.openapi_types[attr]
        if model.__name__ == "V1ResourceRequirements" and attr in ("limits", "requests"):
            kind = "dict(str, ResourceQuantity)"  # the client says str; the API takes numbers
        _check_value(item, kind, f"{where}.{key}", errors)
    for attr in _required(model):
        if value.get(model.attribute_map[attr]) is None:
            errors.append(f"{where}: {model.attribute_map[attr]} is required")


def _check_value(value: Any, kind: str, where: str, errors: list[str]) -> None:
    # The generators write list[X] / List[X] and dict(str, X) / Dict[str, X].
    container = re.fullmatch(r"(list|List)\[(.+)\]|(dict\(|Dict\[)str, (.+)[)\]]", kind)
    if container and container[2]:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {value!r}")
            return
        for index, item in enumerate(value):
            _check_value(item, container[2], f"{where}[{index}]", errors)
    elif container:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a map, got {value!r}")
            return
        for key, item in value.items():
            _check_value(item, container[4], f"{where}.{key}", errors)
    elif kind in _PRIMITIVES:
        expected = _PRIMITIVES[kind]
        if (kind != "bool" and isinstance(value, bool)) or not isinstance(value, expected):
            errors.append(f"{where}: expected {kind}, got {value!r}")
    else:
        _check_model(value, _kserve_model(kind), where, errors)


def kserve_project_errors(objects: list[Obj]) -> list[str]:
    """dl-inference's rules for its KServe runtime and KServe's runtime selection.

    The runtime starts ``dl-inference serve`` with arguments the real command line accepts,
    serving ``/mnt/models`` on KServe's ports, as the images' non-root user. An
    InferenceService names a runtime defined here whose formats include its modelFormat
    (name and, when given, version) and whose protocolVersions include its own; a gRPC one
    routes the runtime's gRPC port as ``h2c``.
    """
    from dl_inference.cli import build_parser, resolve_config

    errors: list[str] = []
    runtimes = {o["metadata"]["name"]: o for o in objects
                if o.get("kind") in {"ServingRuntime", "ClusterServingRuntime"}}
    for runtime in runtimes.values():
        name, spec = describe(runtime), runtime.get("spec", {})
        if not any(f.get("name") == "triton" for f in spec.get("supportedModelFormats", [])):
            errors.append(f"{name}: supportedModelFormats should list triton (a Triton "
                          "model repository is served as it is)")
        for container in spec.get("containers", []):
            if container.get("name") != "kserve-container":
                errors.append(f"{name}: container {container.get('name')}: KServe runs the "
                              "predictor in the container named kserve-container")
                continue
            command = container.get("command", []) + container.get("args", [])
            if command[:2] != ["dl-inference", "serve"]:
                errors.append(f"{name}: the container must run dl-inference serve, not "
                              f"{command[:2]}")
                continue
            try:
                config = resolve_config(build_parser().parse_args(command[1:]))
            except SystemExit:
                errors.append(f"{name}: dl-inference serve refuses its arguments {command[2:]}")
                continue
            if str(config.model_repository) != KSERVE_MODEL_DIR:
                errors.append(f"{name}: --model-repository must be {KSERVE_MODEL_DIR} (where "
                              f"KServe puts storageUri), got {config.model_repository}")
            ports = (config.server.http.port, config.server.grpc.port)
            if ports != (KSERVE_HTTP_PORT, KSERVE_GRPC_PORT):
                errors.append(f"{name}: serve V2 REST on {KSERVE_HTTP_PORT} and gRPC on "
                              f"{KSERVE_GRPC_PORT} (KServe's ports), got {ports}")
            security = container.get("securityContext", {})
            if not security.get("runAsNonRoot") or security.get("runAsUser") != IMAGE_UID:
                errors.append(f"{name}: securityContext needs runAsNonRoot: true and "
                              f"runAsUser: {IMAGE_UID} (the images' USER)")
            errors += resource_errors(name, container)

    for service in (o for o in objects if o.get("kind") == "InferenceService"):
        name = describe(service)
        model = service.get("spec", {}).get("predictor", {}).get("model", {})
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            errors.append(f"{name}: predictor.model.runtime {model.get('runtime')!r} names no "
                          f"runtime in deploy/kserve ({', '.join(sorted(runtimes))})")
            continue
        if not model.get("storageUri"):
            errors.append(f"{name}: predictor.model.storageUri is where the models come from")
        wanted = model.get("modelFormat", {})
        formats = runtime["spec"].get("supportedModelFormats", [])
        if not any(f.get("name") == wanted.get("name")
                   and wanted.get("version") in (None, f.get("version")) for f in formats):
            errors.append(f"{name}: {describe(runtime)} does not support modelFormat {wanted}")
        protocol = model.get("protocolVersion", "v1")
        if protocol not in runtime["spec"].get("protocolVersions", ["v1"]):
            errors.append(f"{name}: {describe(runtime)} does not speak protocolVersion "
                          f"{protocol}")
        ports = {p.get("name"): p.get("containerPort") for p in model.get("ports", [])}
        if protocol == "grpc-v2" and ports.get("h2c") != KSERVE_GRPC_PORT:
            errors.append(f"{name}: a grpc-v2 predictor routes the runtime's gRPC port: "
                          f"ports: [{{name: h2c, containerPort: {KSERVE_GRPC_PORT}}}]")
    return errors


def load_kserve(folder: Path = KSERVE) -> list[Obj]:
    """Every object of the YAML files in ``folder``."""
    return [doc for path in sorted(folder.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def check_kserve(folder: Path = KSERVE) -> list[str]:
    objects = load_kserve(folder)
    return kserve_schema_errors(objects) + kserve_project_errors(objects)


# -- command line --------------------------------------------------------------------------


def check_overlay(path: Path, version: str, renderer: str) -> list[str]:
    objects = render(path, renderer)
    return schema_errors(objects, version) + project_errors(objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlays", nargs="*", type=Path,
                        help="kustomization folders (default: every deploy/k8s/overlays/*)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("--renderer", choices=["auto", "kubectl", "loader"], default="auto")
    args = parser.parse_args(argv)
    overlays = args.overlays or sorted(p for p in OVERLAYS.iterdir() if p.is_dir())
    failed = False
    for overlay in overlays:
        errors = check_overlay(overlay, args.kubernetes_version, args.renderer)
        print(f"{overlay}: {'OK' if not errors else f'{len(errors)} problem(s)'}")
        for line in errors:
            print(f"  {line}")
        failed = failed or bool(errors)
    if not args.overlays:
        errors = check_kserve()
        print(f"{KSERVE}: {'OK' if not errors else f'{len(errors)} problem(s)'}")
        for line in errors:
            print(f"  {line}")
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
