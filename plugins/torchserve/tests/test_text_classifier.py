"""``text_classifier`` by name: TorchServe's text classification handler with the
vocabulary forms that can be read without torchtext, checked against the test's own
tokens and the model called directly (the real TorchServe runs the same archive side by
side in tests/reference/test_torchserve_text_classifier.py)."""

from __future__ import annotations

import io
import itertools
import json
import pickle
import sys
import time
import types
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from _ts_archives import write_mar
from ts.torch_handler.text_handler import load_vocabulary

from dl_inference.testing import ServerProcess

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
TEXT = "The <b>movie</b> wasn't GREAT, caf\u00e9!&amp;"
# What TorchServe's text handler makes of TEXT, worked out by hand: HTML tags and the entity
# removed, lower case, "wasn't" -> "was not", the accent and punctuation removed, tokens,
# then the bigrams.
TOKENS = ["the", "movie", "was", "not", "great", "cafe"]
NGRAMS = TOKENS + [f"{a} {b}" for a, b in itertools.pairwise(TOKENS)]
WORDS = ["<unk>", *NGRAMS, "other", "words"]


def _model() -> torch.nn.Module:
    namespace: dict = {}
    exec(MODEL.replace("\n    ", "\n"), namespace)
    torch.manual_seed(11)
    return namespace["TextSentiment"]().eval()


def _state() -> bytes:
    buffer = io.BytesIO()
    torch.save(_model().state_dict(), buffer)
    return buffer.getvalue()


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _torchtext_vocab(modern: bool) -> bytes:
    """A vocabulary pickled as torchtext pickles its Vocab (a classic one: an object with
    freqs / itos / stoi / unk_index; torchtext 0.12's: torchtext.vocab.vocab.Vocab), made
    with stand-in modules: torchtext itself does not install beside this torch."""
    package = types.ModuleType("torchtext")
    vocab = types.ModuleType("torchtext.vocab")
    module = types.ModuleType("torchtext.vocab.vocab")

    def _default_unk_index() -> int:
        return 0

    class Vocab:
        pass

    owner = module if modern else vocab
    Vocab.__module__, Vocab.__qualname__ = owner.__name__, "Vocab"
    _default_unk_index.__qualname__ = "_default_unk_index"
    _default_unk_index.__module__ = vocab.__name__
    owner.Vocab = Vocab  # type: ignore[attr-defined]
    vocab._default_unk_index = _default_unk_index  # type: ignore[attr-defined]
    saved = {
        name: sys.modules.get(name) for name in (package.__name__, vocab.__name__, module.__name__)
    }
    sys.modules.update({m.__name__: m for m in (package, vocab, module)})
    try:
        value = Vocab()
        value.freqs = Counter(WORDS)  # type: ignore[attr-defined]
        value.itos = list(WORDS)  # type: ignore[attr-defined]
        stoi = defaultdict(_default_unk_index)
        stoi.update({w: i for i, w in enumerate(WORDS)})
        value.stoi = stoi  # type: ignore[attr-defined]
        value.unk_index = 0  # type: ignore[attr-defined]
        return _saved(value)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def test_vocabulary_forms(tmp_path: Path) -> None:
    forms = {
        "dict": _saved({w: i for i, w in enumerate(WORDS)}),
        "list": _saved(list(WORDS)),
        "classic": _torchtext_vocab(modern=False),
    }
    for name, data in forms.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        vocab = load_vocabulary(str(path))
        assert [vocab[w] for w in NGRAMS] == list(range(1, len(NGRAMS) + 1)), name
        assert vocab["never seen"] == 0, name  # <unk> / the Vocab's unk_index
    (tmp_path / "modern.pt").write_bytes(_torchtext_vocab(modern=True))
    with pytest.raises(RuntimeError, match=r"torchtext 0.12\+ Vocab.*torch.save\(dict"):
        load_vocabulary(str(tmp_path / "modern.pt"))
    (tmp_path / "tensor.pt").write_bytes(_saved(torch.zeros(2)))
    with pytest.raises(RuntimeError, match="holds a Tensor, not a vocabulary"):
        load_vocabulary(str(tmp_path / "tensor.pt"))
    # A pickle that would run code is refused, not run.
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(print))
    with pytest.raises(RuntimeError, match="is no vocabulary"):
        load_vocabulary(str(tmp_path / "evil.pt"))


def _expected(model: torch.nn.Module, indices: list[int]) -> dict[str, float]:
    with torch.inference_mode():
        logits = model(torch.tensor(indices), torch.tensor([0])).numpy()[0].astype(np.float64)
    shifted = np.exp(logits - logits.max())
    return {LABELS[str(i)]: p for i, p in enumerate(shifted / shifted.sum())}


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "text/plain")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    work = tmp_path_factory.mktemp("text-classifier")
    store = work / "store"
    common = {"model.py": MODEL, "state.pth": _state(), "index_to_name.json": json.dumps(LABELS)}
    vocabularies = {
        "dict_vocab": _saved({w: i for i, w in enumerate(WORDS)}),
        "classic_vocab": _torchtext_vocab(modern=False),
        "no_unk": _saved({w: i for i, w in enumerate(WORDS) if w != "<unk>"}),
        "modern_vocab": _torchtext_vocab(modern=True),
    }
    for name, vocab in vocabularies.items():
        files = {**common, "source_vocab.pt": vocab}
        write_mar(
            store,
            name,
            files,
            "text_classifier",
            serializedFile="state.pth",
            modelFile="model.py",
        )
    env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
    with ServerProcess(["--model-repository", str(store)], env=env) as server:
        deadline = time.monotonic() + 60
        while _post(f"{server.http_url}/predictions/dict_vocab", b"x")[0] != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        yield server


@pytest.mark.parametrize("model", ["dict_vocab", "classic_vocab"])
def test_text_classifier_answers_every_class(served: ServerProcess, model: str) -> None:
    status, body = _post(f"{served.http_url}/predictions/{model}", TEXT.encode())
    assert status == 200, body
    answer = json.loads(body)
    expected = _expected(_model(), list(range(1, len(NGRAMS) + 1)))
    assert list(answer) == list(expected)  # every class, in class order
    assert np.allclose(list(answer.values()), list(expected.values()), atol=1e-6)
    assert body.startswith(b'{\n  "World": ')  # TorchServe's JSON, indented by 2
    # Unknown tokens take the vocabulary's default index.
    status, body = _post(f"{served.http_url}/predictions/{model}", b"zebra movie")
    expected = _expected(_model(), [0, WORDS.index("movie"), 0])
    assert status == 200 and np.allclose(list(json.loads(body).values()), list(expected.values()))


def test_unknown_tokens_without_a_default_and_unreadable_vocabularies(
    served: ServerProcess,
) -> None:
    status, body = _post(f"{served.http_url}/predictions/no_unk", b"zebra")
    assert (
        status == 400 and "'zebra' is not in the model's vocabulary" in json.loads(body)["message"]
    )
    assert _post(f"{served.http_url}/predictions/no_unk", b"the movie")[0] == 200
    status, body = _post(f"{served.http_url}/predictions/modern_vocab", b"the movie")
    assert (status, json.loads(body)["type"]) == (503, "ServiceUnavailableException")
    assert "holds a torchtext 0.12+ Vocab" in served.output()


def test_explanations_need_captum(served: ServerProcess) -> None:
    try:
        import captum  # noqa: F401
    except ImportError:
        status, body = _post(f"{served.http_url}/explanations/dict_vocab", b"the movie")
        assert status == 501 and "captum" in json.loads(body)["message"]
        return
    status, body = _post(f"{served.http_url}/explanations/dict_vocab", b"the movie")
    answer = json.loads(body)
    assert status == 200 and answer["words"] == ["the", "movie"]
    assert len(answer["importances"]) == 3  # the tokens and their bigram
