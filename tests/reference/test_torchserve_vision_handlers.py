"""TorchServe's default ``image_segmenter`` and ``object_detector`` handlers side by side with
the real TorchServe 0.12 (its venv has torchvision): archives made by its own
``torch-model-archiver --handler <name>`` over small TorchScript models shaped like
torchvision's (a segmentation model's ``{"out": [N, K, H, W]}``, a detection model's list of
``{boxes, labels, scores}``), served by ``torchserve`` and by ``dl-inference serve
--model-repository``; the same image bytes get the same answer bytes. ``image_classifier``
is compared in test_migration_demo_torchserve.py.

A body that is no image fails TorchServe's handler (503 "Prediction failed"); it is the
client's mistake, so dl-inference answers 400 naming it (docs/compatibility.md).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from dl_inference.testing import ServerProcess

from .torchserve import (
    TorchServeServer,
    archive,
    call,
    skip_without_torchvision,
    wait_answered,
)
from .triton import file_hashes

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

LABELS = {str(i): f"thing-{i}" for i in range(4)}


class _Segments(torch.nn.Module):
    """Three classes' scores per pixel, as torchvision's segmentation models: {"out": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = torch.nn.Conv2d(3, 3, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": 3.0 * self.scores(x)}


class _Detections(torch.nn.Module):
    """Three boxes per image, as torchvision's detection models: one sized by the image, one
    placed by its mean pixel; scores 0.9, 0.3 (under the 0.5 threshold) and the mean."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found: list[dict[str, torch.Tensor]] = []
        for image in x:
            height, width = float(image.shape[1]), float(image.shape[2])
            mean = image.mean()
            boxes = torch.tensor([[0.0, 0.0, width, height], [1.0, 2.0, 3.0, 4.0]])
            place = torch.stack([mean, mean, mean + 1, mean + 2]) * 100.0
            found.append(
                {
                    "boxes": torch.cat([boxes, place[None]]),
                    "labels": torch.tensor([1, 2, 3]),
                    "scores": torch.stack([torch.tensor(0.9), torch.tensor(0.3), mean]),
                }
            )
        return found


def _image(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Pair:
    theirs: TorchServeServer
    ours: ServerProcess
    files: dict[str, str]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    skip_without_torchvision()
    work = tmp_path_factory.mktemp("torchserve-vision")
    src, store = work / "src", work / "store"
    src.mkdir()
    for name, module in (("segmenter", _Segments), ("detector", _Detections)):
        torch.manual_seed(3)
        torch.jit.save(torch.jit.script(module().eval()), str(src / f"{name}.pt"))
    labels = src / "index_to_name.json"
    labels.write_text(json.dumps(LABELS))
    archive(store, "segmenter", "image_segmenter", serialized_file=src / "segmenter.pt")
    archive(
        store,
        "detector",
        "object_detector",
        serialized_file=src / "detector.pt",
        extra_files=[labels],
    )
    files = file_hashes(store)
    with TorchServeServer(store, work / "torchserve") as theirs:
        env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
        with ServerProcess(["--model-repository", str(store)], env=env) as ours:
            image = _image((64, 48), "PNG", 0)
            wait_answered(
                ours.http_url,
                "/predictions/detector",
                image,
                {"Content-Type": "image/png"},
                log=ours.output,
            )
            yield Pair(theirs, ours, files)
    assert file_hashes(store) == files


def _post(url: str, model: str, body: bytes) -> tuple[int, bytes]:
    status, answer, _ = call(url, f"/predictions/{model}", body, {"Content-Type": "image/png"})
    return status, answer


@pytest.mark.parametrize(
    ("model", "size", "fmt"),
    [
        ("segmenter", (300, 230), "PNG"),
        ("segmenter", (256, 256), "JPEG"),
        ("detector", (64, 48), "PNG"),
        ("detector", (40, 90), "JPEG"),
    ],
)
def test_the_same_answer_bytes(pair: Pair, model: str, size: tuple[int, int], fmt: str) -> None:
    image = _image(size, fmt, seed=size[0])
    theirs = _post(pair.theirs.http_url, model, image)
    ours = _post(pair.ours.http_url, model, image)
    assert theirs[0] == ours[0] == 200, (theirs[:1], ours[:1], theirs[1][:300], ours[1][:300])
    assert ours[1] == theirs[1]
    answer = json.loads(ours[1])
    if model == "segmenter":  # 224 x 224 pixels of [class, probability]
        assert np.array(answer).shape == (224, 224, 2)
    else:  # the detections at or above 0.5, labelled
        assert [next(iter(d)) for d in answer][:1] == ["thing-1"]


@pytest.mark.parametrize("model", ["segmenter", "detector"])
def test_a_body_that_is_no_image(pair: Pair, model: str) -> None:
    theirs = _post(pair.theirs.http_url, model, b"no image")
    ours = _post(pair.ours.http_url, model, b"no image")
    assert theirs[0] == 503 and json.loads(theirs[1])["message"] == "Prediction failed"
    assert ours[0] == 400 and "not an image file" in json.loads(ours[1])["message"]


def test_the_store_is_unchanged(pair: Pair) -> None:
    # Both servers have served every archive: nothing in the store changed or was added.
    assert file_hashes(pair.theirs.store) == pair.files
