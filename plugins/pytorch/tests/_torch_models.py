"""Real PyTorch models for the plugin's tests, written into a model repository.

The MNIST-shaped CNN's class lives in ``net.py`` beside the saved model, as users keep
it: the server must import it from there to unpickle ``model.pth``.
"""

from __future__ import annotations

import importlib
import io
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

CNN_SOURCE = '''
import torch
from torch import nn


class MnistCNN(nn.Module):
    """28x28 grey image -> 10 logits; small so tests stay fast."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 5 * 5, 10)
        self.scale = scale

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1)) * self.scale
'''

PNG_PROCESSOR = """
import io

import numpy as np
import torch
from PIL import Image


def preprocess(x, **kwargs):
    image = Image.open(io.BytesIO(x)).convert("L")
    if image.size != (28, 28):
        raise ValueError(f"expected a 28x28 image, got {image.size[0]}x{image.size[1]}")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).reshape(1, 1, 28, 28)


def postprocess(y, **kwargs):
    return torch.softmax(y, dim=1)
"""

TWICE_PROCESSOR = """
import torch


def run_model(model, x, **kwargs):
    if kwargs.get("fail"):
        raise RuntimeError("failure requested by the fail tag")
    return model(model(x)) * kwargs.get("scale", 1.0)
"""

CNN_INPUT = {"name": "x", "datatype": "FP32", "shape": [1, 28, 28]}
CNN_OUTPUT = {"name": "logits", "datatype": "FP32", "shape": [10]}


def import_net(folder: Path) -> Any:
    """Import ``folder/net.py`` as module ``net`` (pickle needs it importable by that name)."""
    sys.modules.pop("net", None)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("net")
    finally:
        sys.path.remove(str(folder))


def forget_net() -> None:
    """Drop ``net`` from sys.modules so the next model's net.py is imported afresh."""
    sys.modules.pop("net", None)


def make_cnn(folder: Path, *, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """Write net.py into ``folder`` and build the CNN from it (random weights, fixed seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(textwrap.dedent(CNN_SOURCE))
    net = import_net(folder)
    torch.manual_seed(seed)
    return net.MnistCNN(scale).eval()


def save(module: torch.nn.Module, folder: Path, fmt: str) -> Path:
    """Save ``module`` as ``pth`` (whole module), ``pt`` (TorchScript) or ``pt2`` (export)."""
    if fmt == "pth":
        path = folder / "model.pth"
        torch.save(module, path)
    elif fmt == "pt":
        path = folder / "model.pt"
        torch.jit.save(torch.jit.script(module), path)
    elif fmt == "pt2":
        path = folder / "model.pt2"
        example = (torch.randn(2, 1, 28, 28),)
        batch = torch.export.Dim("batch")
        program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    else:
        raise ValueError(fmt)
    return path


def write_cnn(
    root: Path,
    name: str,
    fmt: str,
    config: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    scale: float = 1.0,
    processor: str = "",
) -> torch.nn.Module:
    """``<root>/<name>/1/`` with net.py + the CNN in ``fmt``; returns the in-process module."""
    version = root / name / "1"
    module = make_cnn(version, seed=seed, scale=scale)
    save(module, version, fmt)
    forget_net()
    if processor:
        (version / "processor.py").write_text(textwrap.dedent(processor))
    write_config(root, name, {"backend": "pytorch", **(config or {})})
    return module


def write_config(root: Path, name: str, config: dict[str, Any]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.yaml").write_text(yaml.safe_dump(config))


def write_twice(root: Path, name: str = "twice") -> torch.nn.Module:
    """A 4->4 linear layer as TorchScript, with a processor whose run_model calls it twice."""
    version = root / name / "1"
    version.mkdir(parents=True)
    torch.manual_seed(1)
    layer = torch.nn.Linear(4, 4).eval()
    torch.jit.save(torch.jit.script(layer), version / "model.pt")
    (version / "processor.py").write_text(textwrap.dedent(TWICE_PROCESSOR))
    write_config(root, name, {"backend": "pytorch"})
    return layer


def digits(batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic float32 images shaped (batch, 1, 28, 28) in [0, 1)."""
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def reference(module: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    """``module`` run in-process on ``array``: what the server must answer."""
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(array))).numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """A greyscale PNG of a uint8 (H, W) array (Pillow if present, else zlib by hand)."""
    try:
        from PIL import Image
    except ImportError:
        return _png_by_hand(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_by_hand(image: np.ndarray) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    height, width = image.shape
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = b"".join(b"\x00" + image[r].tobytes() for r in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_reference(module: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """What the PNG processor must answer for a uint8 (28, 28) ``image``."""
    x = (image.astype(np.float32) / 255.0).reshape(1, 1, 28, 28)
    with torch.inference_mode():
        return torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()


# -- TorchServe's eager pattern: model.py (the class) + a state_dict ---------------------------

EAGER_SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """4 features -> ``hidden`` -> 3 scores."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
'''


def import_source(folder: Path, source: str, module: str = "model") -> Any:
    """Write ``source`` as ``folder/<module>.py`` and import it (afresh) in this process."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(module, None)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)


def write_eager(
    root: Path,
    name: str,
    config: dict[str, Any] | None = None,
    *,
    weights: str = "model.pth",
    source: str = EAGER_SOURCE,
    hidden: int = 8,
    seed: int = 0,
) -> torch.nn.Module:
    """``<root>/<name>/1/`` with model.py (TinyNet) and its state_dict saved as ``weights``,
    as TorchServe's ``--model-file model.py --serialized-file model.pth``; returns the
    module built in-process (what the server must answer)."""
    version = root / name / "1"
    module = import_source(version, source)
    torch.manual_seed(seed)
    net = module.TinyNet(hidden).eval()
    torch.save(net.state_dict(), version / weights)
    if config is not None:  # none: the server must recognise the folder by itself
        write_config(root, name, config)
    return net


def features(batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic float32 rows shaped (batch, 4)."""
    return np.random.default_rng(seed).standard_normal((batch, 4), dtype=np.float32)
