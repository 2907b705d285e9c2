"""TorchServe's default handlers named in the manifest (``image_classifier``,
``image_segmenter``, ``object_detector``), end to end.

These tests need no reference server: the expected answers are computed in the test,
independently of the ``ts`` package (the real TorchServe 0.12 answers ``image_classifier``
requests side by side in tests/reference/test_migration_demo_torchserve.py): the
image resized with PIL to the sizes torchvision documents for ``Resize(256)``, cropped and
normalized with numpy, the test's own TorchScript models run on it, softmax and top-5 in
numpy, labelled from ``index_to_name.json``; the answers are TorchServe's documented shapes
(``image_classifier``: one ``{label: probability}`` object per request, best first, JSON
indented by 2; ``image_segmenter``: H x W ``[class, probability]`` pairs;
``object_detector``: a list of ``{label: box, "score": s}`` at or above 0.5).
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from _ts_archives import write_mar

from dl_inference.testing import ServerProcess

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image", reason="the image handlers need pillow (the torch extra)")

LABELS = {str(i): f"class-{i}" for i in range(10)}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class _Net(torch.nn.Module):
    """Sensitive to every pixel of the 224 x 224 crop: 8 x 8 patches, then a linear layer;
    logits scaled so that the probabilities spread."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.classes = torch.nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * self.classes(torch.flatten(self.patches(x), 1))


def _model() -> torch.jit.ScriptModule:
    torch.manual_seed(7)
    return torch.jit.script(_Net().eval())


def _image(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class _Segments(torch.nn.Module):
    """Three classes' scores per pixel, as torchvision's segmentation models: {"out": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = torch.nn.Conv2d(3, 3, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": 3.0 * self.scores(x)}


class _Detections(torch.nn.Module):
    """Three boxes per image, as torchvision's detection models answer: one sized by the
    image, one by its mean pixel; scores 0.9, 0.3 (under the threshold) and 0.5 (at it)."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found: list[dict[str, torch.Tensor]] = []
        for image in x:
            height, width = float(image.shape[1]), float(image.shape[2])
            mean = image.mean() * 100.0
            boxes = torch.tensor([[0.0, 0.0, width, height], [1.0, 2.0, 3.0, 4.0]])
            boxes = torch.cat([boxes, torch.stack([mean, mean, mean + 1, mean + 2])[None]])
            found.append(
                {
                    "boxes": boxes,
                    "labels": torch.tensor([1, 2, 3]),
                    "scores": torch.tensor([0.9, 0.3, 0.5]),
                }
            )
        return found


def _scripted(module: type[torch.nn.Module]) -> bytes:
    torch.manual_seed(7)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module().eval()), buffer)
    return buffer.getvalue()


def _prepared(image: bytes, resized: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """The image as TorchServe's image handlers prepare it, computed without the ts
    package: ``resized`` and ``offset`` (left, top) are torchvision's documented sizes,
    worked out by hand for the test's images."""
    picture = Image.open(io.BytesIO(image))
    if picture.size != resized:
        picture = picture.resize(resized, Image.Resampling.BILINEAR)
    left, top = offset
    array = np.asarray(picture, np.float32)[top : top + 224, left : left + 224] / 255.0
    tensor = ((array - MEAN) / STD).transpose(2, 0, 1)[None]
    return torch.from_numpy(np.ascontiguousarray(tensor))


def _expected(image: bytes, resized: tuple[int, int], offset: tuple[int, int]) -> dict:
    """What TorchServe's image_classifier answers (see _prepared)."""
    with torch.inference_mode():
        logits = _model()(_prepared(image, resized, offset)).numpy()[0]
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    probabilities = shifted / shifted.sum()
    best = np.argsort(-probabilities)[:5]
    return {LABELS[str(i)]: float(probabilities[i]) for i in best}


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    work = tmp_path_factory.mktemp("image-classifier")
    store = work / "store"
    buffer = io.BytesIO()
    torch.jit.save(_model(), buffer)
    files: dict[str, str | bytes] = {
        "model.pt": buffer.getvalue(),
        "index_to_name.json": json.dumps(LABELS),
    }
    write_mar(store, "classifier", files, "image_classifier", serializedFile="model.pt")
    # text_classifier without its source_vocab.pt: a load error naming the file.
    write_mar(
        store,
        "texts",
        {"model.pt": buffer.getvalue()},
        "text_classifier",
        serializedFile="model.pt",
    )
    labels = {"index_to_name.json": json.dumps(LABELS)}
    write_mar(
        store,
        "segmenter",
        {"model.pt": _scripted(_Segments)},
        "image_segmenter",
        serializedFile="model.pt",
    )
    write_mar(
        store,
        "detector",
        {"model.pt": _scripted(_Detections), **labels},
        "object_detector",
        serializedFile="model.pt",
    )
    config = work / "server.yaml"
    config.write_text(f"model_repository: {store}\nserver:\n  strict_readiness: false\n")
    env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
    with ServerProcess(["-c", str(config)], env=env) as server:
        deadline = time.monotonic() + 120
        url = f"{server.http_url}/predictions/classifier"
        while _post(url, _image(256, 256, 0), "image/png")[0] != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.3)
        yield server


@pytest.mark.parametrize(
    ("size", "resized", "offset"),
    [
        # 320 x 240: the shorter side to 256, the longer int(256 * 320 / 240) = 341; the
        # crop's left round((341 - 224) / 2) = 58 (half to even), top 16.
        ((320, 240), (341, 256), (58, 16)),
        # Portrait, 200 x 333: 256 x int(256 * 333 / 200) = 426; offsets 16, 101.
        ((200, 333), (256, 426), (16, 101)),
        # 300 x 230: int(256 * 300 / 230) = int(333.9) = 333 (truncated, not rounded);
        # left round(54.5) = 54.
        ((300, 230), (333, 256), (54, 16)),
        # The shorter side already 256: not resized, only cropped.
        ((256, 300), (256, 300), (16, 38)),
    ],
)
def test_an_image_gets_its_top5_labels(
    served: ServerProcess, size: tuple[int, int], resized: tuple[int, int], offset: tuple[int, int]
) -> None:
    image = _image(*size, seed=size[0])
    status, body = _post(f"{served.http_url}/predictions/classifier", image, "image/png")
    assert status == 200, body
    answer = json.loads(body)
    expected = _expected(image, resized, offset)
    assert list(answer) == list(expected)  # the same five labels, best first
    assert np.allclose(list(answer.values()), list(expected.values()), rtol=1e-4, atol=1e-6)
    assert body.decode() == json.dumps(answer, indent=2)  # TorchServe's JSON layout


def test_a_multipart_data_field_in_concurrent_requests(served: ServerProcess) -> None:
    # TorchServe's "data" field; concurrent requests may reach the handler as one batch.
    from concurrent.futures import ThreadPoolExecutor

    images = [_image(320, 240, seed) for seed in (1, 2, 3, 4)]

    def form(image: bytes) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="i.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return _post(
            f"{served.http_url}/predictions/classifier",
            body,
            f"multipart/form-data; boundary={boundary}",
        )

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(form, images))
    for image, (status, body) in zip(images, replies, strict=True):
        assert status == 200, body
        expected = _expected(image, (341, 256), (58, 16))
        answer = json.loads(body)
        assert list(answer) == list(expected)
        assert np.allclose(list(answer.values()), list(expected.values()), rtol=1e-4)


def test_a_body_that_is_no_image_is_a_client_error(served: ServerProcess) -> None:
    # The message says what is wrong and what to send: no object repr (PIL's own text names
    # the server's "<_io.BytesIO object at 0x...>"), no server path.
    status, body = _post(f"{served.http_url}/predictions/classifier", b"no image", "image/png")
    assert status == 400, body
    assert json.loads(body) == {
        "code": 400,
        "type": "InternalServerException",  # TorchServe's type for any handler's refusal
        "message": "the request is not an image file: send the bytes of a JPEG, PNG or another "
        "image file PIL reads (as the body or a form's data field; base64 in a text body)",
    }
    cut_short = _image(64, 64, seed=3)[:60]  # a PNG's header, then nothing
    status, body = _post(f"{served.http_url}/predictions/classifier", cut_short, "image/png")
    assert status == 400, body
    assert json.loads(body)["message"] == (
        "the image file is damaged or cut short: PIL cannot decode it; send the whole file"
    )
    # A grayscale image has one channel where ImageNet's normalization takes three.
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((256, 256), np.uint8), "L").save(buffer, format="PNG")
    url = f"{served.http_url}/predictions/classifier"
    status, body = _post(url, buffer.getvalue(), "image/png")
    error = json.loads(body)
    assert (status, error["code"]) == (400, 400), error
    assert "1 channels; 3 are expected" in error["message"]
    status, _ = _post(f"{served.http_url}/predictions/classifier", _image(256, 256, 9), "image/png")
    assert status == 200


def test_a_text_classifier_without_its_vocabulary_fails_to_load(served: ServerProcess) -> None:
    status, body = _post(f"{served.http_url}/predictions/texts", b"some text", "text/plain")
    assert (status, json.loads(body)["type"]) == (503, "ServiceUnavailableException")
    assert "Missing the source_vocab file" in served.output()


def test_image_segmenter_answers_each_pixels_class_and_probability(
    served: ServerProcess,
) -> None:
    image = _image(300, 230, seed=5)
    status, body = _post(f"{served.http_url}/predictions/segmenter", image, "image/png")
    assert status == 200, body[:200]
    answer = np.array(json.loads(body))
    with torch.inference_mode():
        scores = torch.jit.load(io.BytesIO(_scripted(_Segments)))(
            _prepared(image, (333, 256), (54, 16))
        )["out"].numpy()[0]
    shifted = np.exp(scores.astype(np.float64) - scores.max(axis=0))
    probabilities = shifted / shifted.sum(axis=0)
    assert answer.shape == (224, 224, 2)
    assert np.array_equal(answer[..., 0], probabilities.argmax(axis=0).astype(np.float64))
    assert np.allclose(answer[..., 1], probabilities.max(axis=0), rtol=1e-4)


def test_object_detector_answers_labelled_boxes_over_the_threshold(
    served: ServerProcess,
) -> None:
    image = _image(64, 48, seed=6)
    status, body = _post(f"{served.http_url}/predictions/detector", image, "image/png")
    assert status == 200, body
    answer = json.loads(body)
    # Only made a tensor in [0, 1]: no resize, no normalization.
    mean = float(np.asarray(Image.open(io.BytesIO(image)), np.float32).mean() / 255.0) * 100
    assert [list(d) for d in answer] == [["class-1", "score"], ["class-3", "score"]]
    assert answer[0]["class-1"] == [0.0, 0.0, 64.0, 48.0]
    assert answer[0]["score"] == pytest.approx(0.9)
    assert np.allclose(answer[1]["class-3"], [mean, mean, mean + 1, mean + 2], rtol=1e-5)
    assert answer[1]["score"] == 0.5  # at the threshold: kept


def test_transforms_follow_torchvisions_sizes() -> None:
    from ts.torch_handler import transforms

    picture = Image.fromarray(np.zeros((240, 320, 3), np.uint8))
    assert transforms.Resize(256)(picture).size == (341, 256)
    square = Image.fromarray(np.zeros((256, 300, 3), np.uint8))
    assert transforms.Resize(256)(square) is square
    tensor = transforms.ToTensor()(Image.fromarray(np.full((4, 5, 3), 255, np.uint8)))
    assert tuple(tensor.shape) == (3, 4, 5) and float(tensor.max()) == 1.0
