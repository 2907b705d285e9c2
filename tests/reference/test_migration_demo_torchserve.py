"""The TorchServe migration demo, side by side with the real TorchServe 0.12: a user's model
store and ``config.properties`` served as they are by ``torchserve`` and by dl-inference.

The store holds two archives made by TorchServe's own ``torch-model-archiver``:

- ``tabular``: a custom handler (a ``BaseHandler`` subclass: JSON rows in, the best class
  of each row with its probability out) over a TorchScript model, with
  ``index_to_name.json``;
- ``vision``: TorchServe's default ``image_classifier`` handler by name (no handler file)
  over a small seeded TorchScript CNN, with ``index_to_name.json``.

``config.properties`` is as a TorchServe user writes it (addresses, gRPC ports,
``model_store``, ``load_models``, per-model ``batchSize`` / ``maxBatchDelay`` /
``minWorkers`` in ``models=``). TorchServe runs with ``--ts-config`` on it; dl-inference
with ``--model-repository <store>`` and the same file as
``plugin_settings.torchserve.config_properties``. The same request bytes go to both, over
REST and over gRPC with TorchServe's own stubs (compiled from the ``inference.proto`` its
jar ships); the answers are compared byte for byte (the image classifier's probabilities
are computed by two torch builds, so they are compared to a tight tolerance, labels and
their order exactly). Every file of the store and the config is hashed before and after:
nothing changed, nothing added.

Where dl-inference answers differently on purpose, the test pins both answers: an image
TorchServe's transforms cannot take (not an image, RGBA, grayscale) fails TorchServe's
handler (503 "Prediction failed"); it is the client's mistake, so dl-inference answers 400
naming it (docs/compatibility.md); an unknown model over gRPC is NOT_FOUND here, INTERNAL
on TorchServe (plugins/torchserve/README.md).
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dl_inference.testing import ServerProcess, free_port

from .torchserve import (
    TorchServeServer,
    archive,
    call,
    grpc_stubs,
    skip_without_torchvision,
    wait_answered,
)
from .triton import file_hashes

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

TABULAR_HANDLER = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class TabularHandler(BaseHandler):
    \"\"\"Each request: a JSON list of rows of 3 features; answer: per row, the best class
    and its probability.\"\"\"

    def preprocess(self, data):
        self.counts, rows = [], []
        for request in data:
            body = request.get("data") or request.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            self.counts.append(len(body))
            rows.extend(body)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        probabilities = torch.softmax(data, dim=1)
        best = probabilities.argmax(dim=1).tolist()
        answers, start = [], 0
        for count in self.counts:
            rows = enumerate(best[start : start + count], start)
            answers.append(
                [{"class": self.mapping[str(i)], "p": round(probabilities[r, i].item(), 4)}
                 for r, i in rows]
            )
            start += count
        return answers
"""

TABULAR_LABELS = {"0": "bronze", "1": "silver", "2": "gold", "3": "platinum"}
VISION_LABELS = {str(i): f"n0{i}_class" for i in range(10)}


class _Net(torch.nn.Module):
    """A small CNN that sees every pixel of the 224 x 224 crop (8 x 8 patches, then a linear
    layer); logits scaled so that the top-5 probabilities spread."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.classes = torch.nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * self.classes(torch.flatten(self.patches(x), 1))


def _image(size: tuple[int, int], mode: str, fmt: str, seed: int) -> bytes:
    """A seeded picture (gradients and noise) of ``size`` in ``mode``, saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
    pixels = np.clip(ramp + rng.integers(0, 60, (height, width, 4)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_store(work: Path) -> Path:
    """The user's model store, made with the real torch-model-archiver."""
    src = work / "src"
    src.mkdir()
    store = work / "model-store"
    torch.manual_seed(11)
    tabular = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4)).eval())
    tabular.save(str(src / "tabular.pt"))
    (src / "handler.py").write_text(textwrap.dedent(TABULAR_HANDLER))
    labels = src / "tabular" / "index_to_name.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps(TABULAR_LABELS))
    archive(
        store,
        "tabular",
        src / "handler.py",
        serialized_file=src / "tabular.pt",
        extra_files=[labels],
    )
    torch.manual_seed(7)
    torch.jit.script(_Net().eval()).save(str(src / "vision.pt"))
    labels = src / "vision" / "index_to_name.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps(VISION_LABELS))
    archive(
        store,
        "vision",
        "image_classifier",
        serialized_file=src / "vision.pt",
        extra_files=[labels],
    )
    return store


def _write_config_properties(work: Path, store: Path) -> Path:
    """config.properties as a TorchServe user writes it."""
    models = {
        "tabular": {
            "1.0": {"defaultVersion": True, "marName": "tabular.mar", "minWorkers": 1,
                    "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 200},
        },
        "vision": {
            "1.0": {"defaultVersion": True, "marName": "vision.mar", "minWorkers": 1,
                    "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 200},
        },
    }  # fmt: skip
    path = work / "config.properties"
    path.write_text(
        textwrap.dedent(
            f"""\
            # TorchServe settings of the demo store
            inference_address=http://127.0.0.1:{free_port()}
            management_address=http://127.0.0.1:{free_port()}
            metrics_address=http://127.0.0.1:{free_port()}
            grpc_inference_address=127.0.0.1
            grpc_inference_port={free_port()}
            grpc_management_address=127.0.0.1
            grpc_management_port={free_port()}
            model_store={store}
            load_models=tabular.mar,vision.mar
            disable_system_metrics=true
            models={json.dumps(models)}
            """
        )
    )
    return path


@dataclass
class Demo:
    theirs: TorchServeServer
    ours: ServerProcess
    stubs: tuple[ModuleType, ModuleType]
    files: dict[str, str]
    store: Path
    config: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    skip_without_torchvision()
    work = tmp_path_factory.mktemp("torchserve-migration-demo")
    store = _write_store(work)
    config = _write_config_properties(work, store)
    stubs = grpc_stubs(work / "stubs")
    files = file_hashes(store, config)
    theirs = TorchServeServer(store, work / "torchserve", config_properties=config).start()
    try:
        ours_config = work / "dl-inference.yaml"
        # The flags (ServerProcess's free ports, a free metrics port) win over the file's
        # addresses, which the running TorchServe holds; so does management off, for the
        # same reason.
        ours_config.write_text(
            "management: {enabled: false}\n"
            f"plugin_settings:\n  torchserve:\n    config_properties: {config}\n"
        )
        env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
        args = ["-c", str(ours_config), "--model-repository", str(store), "--metrics-port", "0"]
        with ServerProcess(args, env=env) as ours:
            image = _image((256, 256), "RGB", "PNG", 0)
            wait_answered(
                ours.http_url, "/predictions/vision", image, {"Content-Type": "image/png"}
            )
            yield Demo(theirs, ours, stubs, files, store, config)
    finally:
        theirs.stop()
    assert file_hashes(store, config) == files, "a server changed the user's files"


def _both(demo: Demo, path: str, body: bytes, headers: dict[str, str], method: str = "POST"):
    """(theirs, ours): (status, body, content type) for the same request bytes."""
    return (
        call(demo.theirs.http_url, path, body, headers, method),
        call(demo.ours.http_url, path, body, headers, method),
    )


def _same(demo: Demo, path: str, body: bytes, headers: dict[str, str], method: str = "POST"):
    theirs, ours = _both(demo, path, body, headers, method)
    assert ours[:2] == theirs[:2], (path, theirs, ours)
    return ours


def _same_classes(theirs: bytes, ours: bytes) -> dict[str, float]:
    """The image classifier's answers alike: the same labels in the same order (best
    first), the same JSON layout, probabilities to a tight tolerance."""
    mine, reference = json.loads(ours), json.loads(theirs)
    assert list(mine) == list(reference), (reference, mine)
    assert np.allclose(list(mine.values()), list(reference.values()), rtol=1e-5, atol=1e-7)
    assert ours.decode() == json.dumps(mine, indent=2)
    assert theirs.decode() == json.dumps(reference, indent=2)
    return mine


def _multipart(field: str, filename: str, content_type: str, value: bytes):
    boundary = "migration-demo-8c2e"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + value
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


ROWS = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 3.0, 0.0]]

# (size, mode, format): the images TorchServe's image_classifier takes.
IMAGES = {
    "rgb-jpeg-landscape": ((320, 240), "RGB", "JPEG"),
    "rgb-png-portrait": ((200, 333), "RGB", "PNG"),
    "rgb-jpeg-small-upscaled": ((120, 90), "RGB", "JPEG"),
    "rgb-png-not-resized": ((256, 300), "RGB", "PNG"),
    "rgb-png-odd-crop": ((301, 257), "RGB", "PNG"),
}


def test_ping_rest_and_grpc(demo: Demo) -> None:
    assert _same(demo, "/ping", b"", {}, method="GET")[0] == 200
    from google.protobuf import empty_pb2

    _, services = demo.stubs
    answers = []
    for address in (demo.theirs.grpc_address, demo.ours.grpc_address):
        import grpc

        with grpc.insecure_channel(address) as channel:
            stub = services.InferenceAPIsServiceStub(channel)
            answers.append(stub.Ping(empty_pb2.Empty(), timeout=30))
    assert answers[0] == answers[1] and json.loads(answers[1].health) == {"status": "Healthy"}


def test_custom_handler_rest_same_bytes(demo: Demo) -> None:
    raw = json.dumps(ROWS).encode()
    for content_type in ("application/json", "application/octet-stream"):
        status, body, _ = _same(demo, "/predictions/tabular", raw, {"Content-Type": content_type})
        assert status == 200 and len(json.loads(body)) == 3
    _same(demo, "/predictions/tabular/1.0", raw, {"Content-Type": "application/json"})
    _same(demo, "/predictions/tabular", *_multipart("data", "rows.json", "application/json", raw))
    # A row of the wrong width fails the handler on both: TorchServe's 503.
    status, body, _ = _same(
        demo, "/predictions/tabular", b"[[1, 2]]", {"Content-Type": "application/json"}
    )
    assert status == 503 and json.loads(body)["message"] == "Prediction failed"
    json_type = {"Content-Type": "application/json"}
    assert _same(demo, "/predictions/nothing", raw, json_type)[0] == 404
    assert _same(demo, "/predictions/tabular/9.9", raw, json_type)[0] == 404


def test_custom_handler_batches_concurrent_requests(demo: Demo) -> None:
    # batchSize 4 / maxBatchDelay 200 from config.properties: concurrent requests meet in
    # one handler call on both servers; each answer is still its own request's.
    bodies = [json.dumps([[float(i), 1.0, -float(i)]] * (i % 3 + 1)).encode() for i in range(8)]

    def both(body: bytes):
        return _both(demo, "/predictions/tabular", body, {"Content-Type": "application/json"})

    with ThreadPoolExecutor(8) as pool:
        for theirs, ours in pool.map(both, bodies):
            assert ours[:2] == theirs[:2] and ours[0] == 200


@pytest.mark.parametrize("name", IMAGES)
def test_image_classifier_rest(demo: Demo, name: str) -> None:
    size, mode, fmt = IMAGES[name]
    image = _image(size, mode, fmt, seed=size[0])
    content_type = f"image/{fmt.lower()}"
    theirs, ours = _both(demo, "/predictions/vision", image, {"Content-Type": content_type})
    assert ours[0] == theirs[0] == 200, (theirs, ours)
    answer = _same_classes(theirs[1], ours[1])
    assert len(answer) == 5 and set(answer) <= set(VISION_LABELS.values())
    # curl -F "data=@kitten.jpg": the form's data field.
    form = _multipart("data", f"{name}.{fmt.lower()}", content_type, image)
    theirs, ours = _both(demo, "/predictions/vision", *form)
    assert ours[0] == theirs[0] == 200, (theirs, ours)
    _same_classes(theirs[1], ours[1])


def test_image_classifier_base64_text_and_concurrent_requests(demo: Demo) -> None:
    image = _image((320, 240), "RGB", "JPEG", seed=3)
    text = base64.b64encode(image)
    theirs, ours = _both(demo, "/predictions/vision", text, {"Content-Type": "text/plain"})
    assert ours[0] == theirs[0] == 200, (theirs, ours)
    _same_classes(theirs[1], ours[1])
    images = [_image((300 + 10 * i, 240), "RGB", "JPEG", seed=i) for i in range(8)]

    def both(picture: bytes):
        return _both(demo, "/predictions/vision", picture, {"Content-Type": "image/jpeg"})

    with ThreadPoolExecutor(8) as pool:
        for theirs, ours in pool.map(both, images):
            assert ours[0] == theirs[0] == 200, (theirs, ours)
            _same_classes(theirs[1], ours[1])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"this is not an image", "the request is not an image file: send the bytes"),
        (_image((300, 230), "RGBA", "PNG", 5), "4 channels; 3 are expected"),
        (_image((256, 256), "L", "JPEG", 6), "1 channels; 3 are expected"),
    ],
    ids=["not-an-image", "png-with-alpha", "grayscale-jpeg"],
)
def test_image_classifier_refuses_what_its_transforms_cannot_take(
    demo: Demo, body: bytes, why: str
) -> None:
    theirs, ours = _both(demo, "/predictions/vision", body, {"Content-Type": "image/png"})
    # TorchServe: the handler raised (torchvision's Normalize takes three channels; PIL
    # cannot open the body).
    assert theirs[0] == 503, theirs
    assert json.loads(theirs[1]) == {
        "code": 503,
        "type": "InternalServerException",
        "message": "Prediction failed",
    }
    # dl-inference: the client's mistake, said so.
    error = json.loads(ours[1])
    assert (ours[0], error["code"]) == (400, 400), ours
    assert why in error["message"], error


def _predict(demo: Demo, address: str, request: object) -> object:
    """The reply, or (code, details) of the error."""
    import grpc

    _, services = demo.stubs
    with grpc.insecure_channel(address) as channel:
        try:
            return services.InferenceAPIsServiceStub(channel).Predictions(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details()


def test_grpc_predictions_with_torchserves_own_stubs(demo: Demo) -> None:
    import grpc

    messages, _ = demo.stubs
    image = _image((320, 240), "RGB", "JPEG", seed=8)
    cases = [
        messages.PredictionsRequest(
            model_name="tabular", input={"data": json.dumps(ROWS).encode()}
        ),
        messages.PredictionsRequest(
            model_name="tabular", model_version="1.0", input={"body": b"[[1, 2, 3]]"}
        ),
        messages.PredictionsRequest(model_name="vision", input={"data": image}),
    ]
    for request in cases:
        theirs = _predict(demo, demo.theirs.grpc_address, request)
        ours = _predict(demo, demo.ours.grpc_address, request)
        assert isinstance(ours, messages.PredictionResponse), ours
        assert isinstance(theirs, messages.PredictionResponse), theirs
        if request.model_name == "vision":
            _same_classes(theirs.prediction, ours.prediction)
        else:
            assert ours.prediction == theirs.prediction
    # Errors: the handler's failure alike; an unknown model is NOT_FOUND here (TorchServe:
    # INTERNAL), with TorchServe's text.
    failing = messages.PredictionsRequest(model_name="tabular", input={"data": b"[[1]]"})
    theirs = _predict(demo, demo.theirs.grpc_address, failing)
    assert _predict(demo, demo.ours.grpc_address, failing) == theirs
    assert theirs[0] == grpc.StatusCode.UNAVAILABLE
    unknown = messages.PredictionsRequest(model_name="nothing", input={"data": b"1"})
    theirs = _predict(demo, demo.theirs.grpc_address, unknown)
    ours = _predict(demo, demo.ours.grpc_address, unknown)
    assert (theirs[0], ours[0]) == (grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND)
    assert ours[1] == theirs[1]


def test_the_users_files_are_unchanged(demo: Demo) -> None:
    # Both servers have loaded and served every archive by now: the store and the config
    # are byte for byte what the user wrote, and nothing was added next to them.
    assert file_hashes(demo.store, demo.config) == demo.files
    assert sorted(p.name for p in demo.store.iterdir()) == ["tabular.mar", "vision.mar"]
