"""``text_classifier`` side by side with the real TorchServe 0.12: one archive made by the
real ``torch-model-archiver --handler text_classifier`` (an EmbeddingBag model as
``--model-file`` + state dict, ``source_vocab.pt``, ``index_to_name.json``), served by
``torchserve`` and by ``dl-inference serve``; the same texts get the same answer bytes.

The vocabulary is a plain dict saved with ``torch.save``: TorchServe 0.12 under this torch
loads ``source_vocab.pt`` with ``torch.load``'s default ``weights_only=True``, which reads
no torchtext ``Vocab`` (and torchtext does not install beside this torch), so a dict is the
form both can read. Every token of the texts is in it: a dict has no default index, so
TorchServe fails a text with an unknown token (503), where dl-inference gives it the
index of the dict's ``<unk>`` entry (without one: 400 naming the token).
Explanations (captum's layer integrated gradients): where captum is not installed beside
dl-inference, the server answers 501 and dl-inference's ``ts`` text_classifier is run in
TorchServe's venv (which has captum) on the archive's files: the same answer bytes.
"""

from __future__ import annotations

import io
import json
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess

from .torchserve import (
    TorchServeServer,
    archive,
    call,
    skip_without_torchserve,
    wait_answered,
)

MODEL = """
import torch


class TextSentiment(torch.nn.Module):
    def __init__(self, vocab_size=40, embed_dim=8, num_class=3):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab_size, embed_dim, sparse=False)
        self.fc = torch.nn.Linear(embed_dim, num_class)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
"""

LABELS = {"0": "World", "1": "Sports", "2": "Business"}
# Texts whose tokens (after TorchServe's cleanup: HTML, case, contractions, accents,
# punctuation) and bigrams are all in the vocabulary.
TEXTS = [
    "The <b>movie</b> wasn't GREAT, caf\u00e9!",
    "great movie",
    "the the the",
]
WORDS = [
    "<unk>", "the", "movie", "was", "not", "great", "cafe",
    "the movie", "movie was", "was not", "not great", "great cafe", "great movie", "the the",
]  # fmt: skip


@dataclass
class Pair:
    theirs: TorchServeServer
    ours: ServerProcess


def post(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    status, answer, _ = call(url, path, body, {"Content-Type": "text/plain"})
    return status, answer


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    import torch

    skip_without_torchserve()
    work = tmp_path_factory.mktemp("torchserve-text")
    src, store = work / "src", work / "store"
    src.mkdir()
    (src / "model.py").write_text(textwrap.dedent(MODEL))
    namespace: dict = {}
    exec(textwrap.dedent(MODEL), namespace)
    torch.manual_seed(11)
    torch.save(namespace["TextSentiment"]().state_dict(), src / "state.pth")
    buffer = io.BytesIO()
    torch.save({word: index for index, word in enumerate(WORDS)}, buffer)
    (src / "source_vocab.pt").write_bytes(buffer.getvalue())
    (src / "index_to_name.json").write_text(json.dumps(LABELS))
    archive(
        store,
        "texts",
        "text_classifier",
        serialized_file=src / "state.pth",
        model_file=src / "model.py",
        extra_files=[src / "source_vocab.pt", src / "index_to_name.json"],
    )
    theirs = TorchServeServer(store, work / "torchserve").start()
    try:
        env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
        with ServerProcess(["--model-repository", str(store)], env=env) as ours:
            ours.archive_files = src  # type: ignore[attr-defined]
            wait_answered(
                ours.http_url,
                "/predictions/texts",
                b"movie",
                {"Content-Type": "text/plain"},
                log=ours.output,
            )
            yield Pair(theirs, ours)
    finally:
        theirs.stop()


@pytest.mark.parametrize("text", TEXTS)
def test_text_classifier_answers_alike(pair: Pair, text: str) -> None:
    theirs = post(pair.theirs.http_url, "/predictions/texts", text.encode())
    ours = post(pair.ours.http_url, "/predictions/texts", text.encode())
    assert theirs[0] == 200, theirs
    assert ours == theirs
    assert list(json.loads(ours[1])) == ["World", "Sports", "Business"]


def test_an_unknown_token(pair: Pair) -> None:
    theirs = post(pair.theirs.http_url, "/predictions/texts", b"zebra movie")
    ours = post(pair.ours.http_url, "/predictions/texts", b"zebra movie")
    # TorchServe: the dict's KeyError fails the batch; dl-inference: <unk>'s index.
    assert json.loads(theirs[1])["message"] == "Prediction failed" and theirs[0] == 503
    assert ours[0] == 200 and list(json.loads(ours[1])) == ["World", "Sports", "Business"]


EXPLAIN = """
import json
import sys

sys.path.insert(0, sys.argv[1])  # dl-inference's ts package, before TorchServe's
sys.path.insert(1, sys.argv[2])  # the archive's files (model.py)
import ts.context
from ts.torch_handler.text_classifier import TextClassifier

assert ts.context.__file__.startswith(sys.argv[1]), ts.context.__file__
manifest = {"model": {"modelName": "texts", "serializedFile": "state.pth",
                      "modelFile": "model.py", "handler": "text_classifier"}}
context = ts.context.Context("texts", sys.argv[2], manifest, 1, None, "0.12.0")
handler = TextClassifier()
handler.initialize(context)
context.request_ids = {0: "r"}
context.request_processor = [ts.context.RequestProcessor({"explain": "True"})]
[answer] = handler.handle([{"body": bytearray(sys.argv[3].encode())}], context)
sys.stdout.write(json.dumps(answer, indent=2))
"""


def test_explanations(pair: Pair, tmp_path: Path) -> None:
    theirs = post(pair.theirs.http_url, "/explanations/texts", b"great movie")
    ours = post(pair.ours.http_url, "/explanations/texts", b"great movie")
    assert theirs[0] == 200 and json.loads(theirs[1])["words"] == ["great", "movie"]
    try:
        import captum  # noqa: F401
    except ImportError:
        # captum is not installed beside dl-inference here: the handler says so ...
        assert ours[0] == 501 and "captum" in json.loads(ours[1])["message"]
        # ... so dl-inference's text_classifier explains in the TorchServe venv (which has
        # captum), on the same archive's files: the same answer bytes.
        venv = skip_without_torchserve()
        script = tmp_path / "explain.py"
        script.write_text(EXPLAIN)
        plugin = Path(__file__).resolve().parents[2] / "plugins" / "torchserve"
        files = pair.ours.archive_files  # type: ignore[attr-defined]
        explained = subprocess.run(
            [str(venv / "bin" / "python"), str(script), str(plugin), str(files), "great movie"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert explained.returncode == 0, explained.stderr.decode()[-2000:]
        assert explained.stdout == theirs[1], (explained.stdout, theirs[1])
        return
    assert ours == theirs
