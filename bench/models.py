"""Seeded benchmark models and the dl-inference model repositories that serve them.

The two networks and the seeding follow ../shared/peers/make_models.py (the peer-anchor
recipes used to measure MLServer and TorchServe on this machine), so the figures compare:
MLP 256 -> 1024 -> 1024 -> 10 and a small CNN on 3x64x64. Each is saved as TorchScript and
served by a python-backend ``model.py`` that loads it with torch.

    python bench/models.py --out /tmp/dli-bench/models
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

# resnet18: issue 6's compute-heavy CNN, ResNet-18's layout (7x7/2 stem, max-pool, 4 stages
# of 2 basic blocks, 64-512 channels) on 3x64x64, about 0.15 GFLOP per sample.
SHAPES = {"mlp": (256,), "cnn": (3, 64, 64), "resnet18": (3, 64, 64)}

MODEL_PY = '''
import os

import numpy as np
import torch

from dl_inference import PythonModel


class TorchScript(PythonModel):
    """The TorchScript file beside this one, under torch.inference_mode()."""

    # torch alone runs here: a request that finds the model idle may run on the loop.
    self_contained = True

    def load(self):
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
        self.model = torch.jit.load(str(self.path / "model.pt")).eval()

    def predict(self, inputs, **parameters):
        with torch.inference_mode():
            out = self.model(torch.from_numpy(inputs["input"]))
        return {"output": out.numpy()}
'''

# Python-bound pre-processing (for --workers): pure-Python work holding the GIL, then a
# tiny matrix product. One process can use only one core for this; two can use two.
PYHEAVY_PY = """
import numpy as np

from dl_inference import PythonModel


class PythonHeavy(PythonModel):
    def load(self):
        self.w = np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32)

    def predict(self, inputs, **parameters):
        x = inputs["input"]
        acc = 0.0
        for i in range(20000):  # ~1-2 ms of interpreter time per request
            acc += (i % 7) * 0.5
        return {"output": (x @ self.w) + np.float32(acc * 0)}
"""


def build(name: str) -> Any:
    from torch import nn

    if name == "resnet18":
        return _resnet18(nn)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def _resnet18(nn: Any) -> Any:
    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            project = nn.Conv2d(cin, cout, 1, stride, bias=False)
            keep = stride == 1 and cin == cout
            self.skip = nn.Identity() if keep else nn.Sequential(project, nn.BatchNorm2d(cout))
            self.relu = nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.relu(self.body(x) + self.skip(x))

    layers: list[Any] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]  # fmt: skip
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def config_yaml(
    name: str, *, batching: bool, max_batch_size: int = 32, queue_delay_ms: float = 0
) -> str:
    shape = list(SHAPES.get(name, (256,)))
    return textwrap.dedent(f"""\
        backend: python
        max_batch_size: {max_batch_size}
        dynamic_batching: {str(batching).lower()}
        max_queue_delay_ms: {queue_delay_ms:g}
        inputs: [{{name: input, datatype: FP32, shape: {shape}}}]
        outputs: [{{name: output, datatype: FP32, shape: [10]}}]
        """)


def write_model(
    root: Path, name: str, models_dir: Path, *, batching: bool, queue_delay_ms: float = 0
) -> Path:
    """``root/<name>/1/{model.py, model.pt}`` + config.yaml: the TorchScript file
    ``models_dir/<name>/model.pt`` (linked, so every server loads the same bytes) served by
    :data:`MODEL_PY`. Returns ``root``."""
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(MODEL_PY)
    link = version / "model.pt"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(models_dir / name / "model.pt")
    (root / name / "config.yaml").write_text(
        config_yaml(name, batching=batching, queue_delay_ms=queue_delay_ms)
    )
    return root


def write_repository(root: Path, models_dir: Path, *, batching: bool) -> Path:
    """``root/<model>/1/{model.py, model.pt}`` + config.yaml for each model and pyheavy."""
    for name in SHAPES:
        write_model(root, name, models_dir, batching=batching)
    version = root / "pyheavy" / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(PYHEAVY_PY)
    (root / "pyheavy" / "config.yaml").write_text(config_yaml("pyheavy", batching=False))
    return root


def make_models(out: Path, seed: int = 0) -> None:
    """TorchScript files plus a reference input/output pair per model."""
    import torch

    for name, shape in SHAPES.items():
        folder = out / name
        if (folder / "model.pt").exists():
            continue
        torch.manual_seed(seed)
        model = build(name).eval()
        folder.mkdir(parents=True, exist_ok=True)
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed + 1))
        with torch.inference_mode():
            traced = torch.jit.trace(model, x)
            y = model(x)
        traced.save(str(folder / "model.pt"))
        np.savez(folder / "reference.npz", input=x.numpy(), output=y.numpy())


def write_peer_model(name: str, folder: Path, seed: int = 0) -> None:
    """One model in the peers' layout (../shared/peers/make_models.py): ``model.pt`` and a
    batch-of-one ``reference.npz`` with keys ``x`` and ``y``, seeded as the peers seed theirs.
    For the models the peers do not build (the ResNet-18-like one), so that Triton,
    TorchServe and MLServer load them through the peers' own recipes."""
    import torch

    torch.manual_seed(seed)
    model = build(name).eval()
    x = torch.randn(1, *SHAPES[name], generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        traced = torch.jit.trace(model, x)
        y = model(x)
    folder.mkdir(parents=True, exist_ok=True)
    traced.save(str(folder / "model.pt"))
    np.savez(folder / "reference.npz", x=x.numpy(), y=y.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dli-bench/models"))
    args = parser.parse_args()
    make_models(args.out)
    print(f"models in {args.out}")


if __name__ == "__main__":
    main()
