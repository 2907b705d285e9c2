"""Finding and loading a version folder's model file, with the model's own import path.

Imports torch at module level: only :mod:`dl_inference_pytorch.backend` (inside ``load()``)
and the convert command import this module, so listing plugins never pays for torch.
"""

from __future__ import annotations

import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dl_inference import BackendError, ConfigError, isolated_imports

# Formats by preference: a converted, trust-free file wins over the pickle it came from.
SUFFIX_KIND = {".pt2": "export", ".pt": "torchscript", ".pth": "pickle"}
KIND_LABEL = {
    "export": "torch.export program",
    "torchscript": "TorchScript module",
    "pickle": "pickled whole module",
}
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


def find_model_file(folder: Path, model_file: str | None) -> ModelFile:
    """The configured ``model_file``, else the one .pt2 / .pt / .pth file (in that preference)."""
    if model_file:
        path = folder / model_file
        if not path.is_file():
            raise ConfigError(f"model_file {model_file!r} does not exist in {folder}")
        kind = SUFFIX_KIND.get(path.suffix)
        if kind is None:
            raise ConfigError(
                f"model_file {model_file!r}: unknown suffix; use .pt2 (torch.export), "
                ".pt (TorchScript) or .pth (whole module saved with torch.save)"
            )
        return _refine(ModelFile(path, kind))
    for suffix, kind in SUFFIX_KIND.items():
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
        "(TorchScript) or model.pth (torch.save of the whole module) there"
    )


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


def load_module(found: ModelFile, device: torch.device, *, trust_pickle: bool, folder: Path) -> Any:
    """The callable model: an ``nn.Module``, ScriptModule or ``ExportedProgram``."""
    with _LOAD_LOCK:
        return _load(found, device, trust_pickle=trust_pickle, folder=folder)


def _load(found: ModelFile, device: torch.device, *, trust_pickle: bool, folder: Path) -> Any:
    if found.kind == "torchscript":
        return torch.jit.load(str(found.path), map_location=device)
    if found.kind == "export":
        program = torch.export.load(str(found.path))
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        return program
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
        what = "a state_dict" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
        raise BackendError(
            f"{found.path.name} holds {what}, not a module; save the whole module "
            "(torch.save(model)), or a TorchScript / torch.export file"
        )
    return loaded
