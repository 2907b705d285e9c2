"""Finding and loading a version folder's model file, with the model's own import path.

Imports torch at module level: only :mod:`dl_inference_pytorch.backend` (inside ``load()``)
and the convert command import this module, so listing plugins never pays for torch.
"""

from __future__ import annotations

import inspect
import pickle
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dl_inference import BackendError, ConfigError, import_user_file, isolated_imports

# Formats by preference: a converted, trust-free file wins over the pickle it came from.
SUFFIX_KIND = {".pt2": "export", ".pt": "torchscript", ".pth": "pickle"}
KIND_LABEL = {
    "export": "torch.export program",
    "torchscript": "TorchScript module",
    "pickle": "pickled whole module",
    "state_dict": "state_dict built with model.py's class",
}
# TorchServe's eager pattern: the module's class in model.py, its weights as a state_dict
# (``torch.save(model.state_dict())``) beside it, as .pth, .pt or .bin.
MODEL_PY = "model.py"
# How many missing / unexpected keys a load error lists.
SHOWN_KEYS = 5
STATE_DICT_EXAMPLE = (
    "    import torch\n"
    "    class Net(torch.nn.Module):  # the class you trained, as it was\n"
    "        ...  # its __init__ (the same layers) and forward"
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CONVERT_HINT = "dl-inference convert {file} {file.parent}/model.pt2 --trust-pickle --input ..."

# torch.export.load keeps its deserializer in a module global ("_CURRENT_DESERIALIZER is
# already set" when two threads load at once): every load goes through this lock.
_LOAD_LOCK = threading.Lock()


@dataclass
class ModelFile:
    """The file a version folder is served from, and how to load it."""

    path: Path
    kind: str  # export | torchscript | pickle

    @property
    def label(self) -> str:
        return KIND_LABEL[self.kind]


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device, checked against this machine."""
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device {spec!r} is not supported; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise BackendError(
            f"device {spec!r} was asked for, but CUDA is not available here (torch "
            f"{torch.__version__} is {build}, and {torch.cuda.device_count()} GPU(s) are "
            "visible); set `device: cpu` in the model's config.yaml, or run on a machine "
            "with a GPU and a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    index = device.index or 0
    if index >= count:
        raise BackendError(
            f"device {spec!r} was asked for, but only {count} GPU(s) are visible "
            f"(cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES or the model's `device`"
        )
    return torch.device("cuda", index)


def has_model_py(folder: Path) -> bool:
    """Whether ``folder`` holds the eager pattern's ``model.py`` (the module's class)."""
    return (folder / MODEL_PY).is_file()


def find_model_file(folder: Path, model_file: str | None) -> ModelFile:
    """The configured ``model_file``, else the one .pt2 / .pt / .pth file (in that
    preference), else, beside a ``model.py``, the one .bin file (a state_dict)."""
    eager = has_model_py(folder)
    if model_file:
        path = folder / model_file
        if not path.is_file():
            raise ConfigError(f"model_file {model_file!r} does not exist in {folder}")
        kind = SUFFIX_KIND.get(path.suffix) or ("pickle" if path.suffix == ".bin" else None)
        if kind is None:
            raise ConfigError(
                f"model_file {model_file!r}: unknown suffix; use .pt2 (torch.export), "
                ".pt (TorchScript), .pth (whole module saved with torch.save, or a "
                "state_dict beside model.py) or .bin (a state_dict beside model.py)"
            )
        return _refine(ModelFile(path, kind))
    kinds = {**SUFFIX_KIND, ".bin": "pickle"} if eager else SUFFIX_KIND
    for suffix, kind in kinds.items():
        found = sorted(folder.glob(f"*{suffix}"))
        if len(found) == 1:
            return _refine(ModelFile(found[0], kind))
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ConfigError(
                f"{folder} holds several {suffix} files ({names}); choose one with "
                "`model_file:` in the model's config.yaml"
            )
    raise ConfigError(
        f"{folder} holds no model file; put model.pt2 (torch.export), model.pt "
        "(TorchScript), model.pth (torch.save of the whole module), or model.py with "
        "the module's class plus its state_dict as model.pth there"
    )


def triton_model_file(folder: Path, triton: Mapping[str, Any]) -> ModelFile:
    """The TorchScript file Triton's libtorch backend serves from the version folder
    ``folder``: config.pbtxt's ``default_model_filename``, else ``model.pt``."""
    name = triton.get("default_model_filename") or "model.pt"
    path = folder / name
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: a Triton pytorch_libtorch model is <version>/model.pt "
            "(TorchScript, torch.jit.save), or the file config.pbtxt's "
            "default_model_filename names"
        )
    if not is_torchscript_archive(path):
        raise BackendError(
            f"{path.name} is not a TorchScript archive, which is all Triton's "
            "pytorch_libtorch platform serves: save the model with "
            "torch.jit.save(torch.jit.script(model), ...), or serve it with a config.yaml "
            "instead of config.pbtxt"
        )
    return ModelFile(path, "torchscript")


def _refine(found: ModelFile) -> ModelFile:
    # ".pt" is used for TorchScript archives and for torch.save pickles alike; only the
    # archive's contents tell them apart (TorchScript stores compiled code under code/).
    if found.kind == "torchscript" and not is_torchscript_archive(found.path):
        return ModelFile(found.path, "pickle")
    return found


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (not a ``torch.save`` pickle)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def load_module(
    found: ModelFile,
    device: torch.device,
    *,
    trust_pickle: bool,
    folder: Path,
    model_class: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    module_name: str = "dl_inference_pytorch_models.model",
) -> tuple[Any, ModelFile]:
    """The callable model (an ``nn.Module``, ScriptModule or ``ExportedProgram``) and the
    file as it turned out to be (a ``.pth`` holding a state_dict is kind ``state_dict``).

    ``model_class`` / ``model_args`` choose and build ``model.py``'s class for a
    state_dict; ``module_name`` is the private name ``model.py`` is imported under.
    """
    with _LOAD_LOCK:
        if found.kind == "torchscript":
            return torch.jit.load(str(found.path), map_location=device), found
        if found.kind == "export":
            program = torch.export.load(str(found.path))
            if device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            return program, found
        weights = _weights_only(found.path)
        if weights is not None:
            return _from_state_dict(
                found, weights, folder, model_class, model_args or {}, module_name
            ), ModelFile(found.path, "state_dict")
        return _whole_module(found, device, trust_pickle=trust_pickle, folder=folder), found


def _weights_only(path: Path) -> Any:
    """What ``path`` holds when plain data (tensors, dicts, numbers) is all it holds:
    loaded without running code, so no trust is needed. ``None`` for a pickle of objects
    (a whole module), which only a trusted load can read."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        from dl_inference_pytorch.backend import torch_reason

        raise BackendError(
            f"{path.name} cannot be read as a torch.save file: {torch_reason(exc)}"
        ) from exc


def is_state_dict(value: Any) -> bool:
    """A mapping of names (``fc.weight``) to tensors: what ``module.state_dict()`` gives."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _whole_module(
    found: ModelFile, device: torch.device, *, trust_pickle: bool, folder: Path
) -> Any:
    if not trust_pickle:
        raise BackendError(
            f"{found.path.name} is a pickled whole module: loading it runs any code the "
            "file contains, so it is loaded only when you trust it. Set `trust_pickle: true` "
            f"in {folder.parent / 'config.yaml'} if you do, or convert it once into a format "
            f"that needs no trust and serve that instead: {CONVERT_HINT.format(file=found.path)}"
        )
    with isolated_imports(folder):
        loaded = torch.load(str(found.path), map_location=device, weights_only=False)
    if not isinstance(loaded, torch.nn.Module):
        raise BackendError(
            f"{found.path.name} holds a {type(loaded).__name__}, not a module; save the whole "
            "module (torch.save(model)), or a TorchScript / torch.export file"
        )
    return loaded


def _from_state_dict(
    found: ModelFile,
    weights: Any,
    folder: Path,
    model_class: str | None,
    model_args: Mapping[str, Any],
    module_name: str,
) -> torch.nn.Module:
    """TorchServe's eager pattern: ``model.py``'s class, built and given the state_dict."""
    name = found.path.name
    if not is_state_dict(weights):
        raise BackendError(
            f"{name} holds {_describe(weights)}, not a module or a state_dict"
            + _checkpoint_hint(weights)
        )
    if not has_model_py(folder):
        keys = ", ".join(list(weights)[:3])
        raise BackendError(
            f"{name} is a state_dict (an OrderedDict of {len(weights)} tensors named like "
            f"{keys}), which holds weights but not the module they belong to. To serve it, "
            f"put model.py beside it defining that torch.nn.Module class (as TorchServe's "
            f"--model-file), e.g.\n{STATE_DICT_EXAMPLE}\n"
            "The backend then builds the class, loads the state_dict into it and needs no "
            "trust_pickle. Or save the whole model as TorchScript (torch.jit.save) or "
            "torch.export (.pt2)."
        )
    cls = _model_class(folder / MODEL_PY, module_name, model_class)
    try:
        module = cls(**model_args)
    except Exception as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
        raise BackendError(
            f"model.py: {cls.__name__}({given}) raised {type(exc).__name__}: {exc}; give its "
            "constructor's arguments with `model_args: {...}` in the model's config.yaml"
        ) from exc
    _check_fits(module, weights, name)
    module.load_state_dict(weights, strict=True)
    return module.eval()


def _model_class(path: Path, module_name: str, wanted: str | None) -> type[torch.nn.Module]:
    """The one ``torch.nn.Module`` subclass ``model.py`` defines, or the one named
    ``wanted`` (``model_class:`` in config.yaml)."""
    module = import_user_file(path, module_name)
    classes = {
        obj.__name__: obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, torch.nn.Module)
        and obj.__module__ == module_name
    }
    found = ", ".join(classes) or "none"
    if wanted is not None:
        if wanted not in classes:
            raise ConfigError(
                f"model_class {wanted!r} is not a torch.nn.Module subclass defined in "
                f"{path.name} (found: {found})"
            )
        return classes[wanted]
    if len(classes) != 1:
        raise BackendError(
            f"{path.name} must define exactly one torch.nn.Module subclass to build for the "
            f"state_dict (found: {found}); name the one to build with `model_class: <Name>` "
            "in the model's config.yaml"
        )
    return next(iter(classes.values()))


def _check_fits(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], name: str) -> None:
    """Missing and unexpected keys and shape mismatches, listed (the first few of each)."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        f"{k} is {list(weights[k].shape)} in {name} but {list(v.shape)} in the module"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {_first(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        )
        if keys
    ]
    if not problems:
        return
    hint = ""
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = (
            "; the keys start with 'module.' (saved from DataParallel): save "
            "model.module.state_dict() instead"
        )
    raise BackendError(
        f"{name} does not fit {type(module).__name__} from {MODEL_PY}: {'; '.join(problems)}{hint}"
    )


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return shown + (", ..." if len(items) > SHOWN_KEYS else "")


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict (keys: {_first([str(k) for k in value])})" if value else "an empty dict"
    return f"a {type(value).__name__}"


def _checkpoint_hint(value: Any) -> str:
    # A training checkpoint nests the state_dict under a key beside optimizer state.
    if isinstance(value, Mapping):
        inner = [k for k, v in value.items() if is_state_dict(v)]
        if inner:
            return (
                f"; it looks like a training checkpoint whose state_dict is under "
                f"{inner[0]!r}: save that alone (torch.save(checkpoint[{inner[0]!r}], ...))"
            )
    return ""
