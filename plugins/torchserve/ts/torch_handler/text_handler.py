"""``ts.torch_handler.text_handler.TextHandler``: the base of TorchServe's text handlers.

As TorchServe 0.12 documents it: ``initialize`` loads the model (BaseHandler) and the
archive's vocabulary, ``source_vocab.pt`` (or the manifest's ``sourceVocab``); the text
helpers clean a line before it is tokenized (HTML tags and entities removed, contractions
expanded, accents and punctuation removed) and tokenize it with torchtext's
``basic_english`` rules (:mod:`ts.handler_utils.text_utils`, no torchtext needed).

The vocabulary file is read without torchtext (:func:`load_vocabulary`): a ``dict`` of
token -> index or a ``list`` of tokens saved with ``torch.save``, or a torchtext ``Vocab``
of the classic kind (an object with ``itos`` / ``stoi``, as torchtext 0.6-0.11's
``build_vocab_from_iterator`` / datasets made them). torchtext 0.12's ``Vocab`` (a C++
object) is refused at load, saying how to save the vocabulary as a plain dict.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import string
import unicodedata
from abc import ABC
from collections import Counter, OrderedDict, defaultdict
from typing import Any

from ts.handler_utils.text_utils import get_tokenizer
from ts.torch_handler.base_handler import BaseHandler
from ts.torch_handler.contractions import CONTRACTION_MAP
from ts.utils.util import CLEANUP_REGEX, PredictionException

logger = logging.getLogger(__name__)

# Longest first: "can't've" is expanded whole, not as "can't" + "'ve".
CONTRACTIONS_PATTERN = re.compile(
    "({})".format("|".join(re.escape(k) for k in sorted(CONTRACTION_MAP, key=len, reverse=True))),
    flags=re.IGNORECASE | re.DOTALL,
)

UNKNOWN = "<unk>"


class Vocabulary:
    """Tokens to indices, as a text handler looks them up (``vocab[token]``): a token not
    in it is the default index (a classic torchtext Vocab's ``unk_index``, else the index
    of ``<unk>`` when there is one); without a default, :class:`PredictionException` 400
    naming the token."""

    def __init__(self, stoi: dict[str, int], default: int | None) -> None:
        self.stoi = stoi
        self.default = default

    def __getitem__(self, token: str) -> int:
        index = self.stoi.get(token)
        if index is not None:
            return index
        if self.default is None:
            raise PredictionException(
                f"the token {token!r} is not in the model's vocabulary (source_vocab.pt has "
                f"no {UNKNOWN} entry for unknown tokens)",
                400,
            )
        return self.default

    def __len__(self) -> int:
        return len(self.stoi)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def get_stoi(self) -> dict[str, int]:
        return dict(self.stoi)

    def get_itos(self) -> list[str]:
        return [token for token, _ in sorted(self.stoi.items(), key=lambda item: item[1])]


class _ClassicVocab:
    """Stands for a pickled classic ``torchtext.vocab.Vocab``: keeps its attributes."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _unknown_index() -> int:
    """Stands for torchtext's ``_default_unk_index`` (the stoi default of classic Vocabs)."""
    return 0


class _VocabUnpickler(pickle.Unpickler):
    """Unpickles a classic torchtext Vocab without torchtext, and nothing else of code:
    only containers, the Vocab's stand-in and torch's own storage rebuilders are found."""

    _ALLOWED = {
        ("collections", "Counter"): Counter,
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "defaultdict"): defaultdict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module.startswith("torchtext"):
            if name == "Vocab" and module in ("torchtext.vocab", "torchtext.vocab.vocab"):
                if module == "torchtext.vocab.vocab":
                    raise _ModernVocab
                return _ClassicVocab
            if name == "_default_unk_index":
                return _unknown_index
            raise _ModernVocab
        if module == "torch._utils" and name.startswith("_rebuild"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a vocabulary file")


class _ModernVocab(pickle.UnpicklingError):
    """The file holds torchtext 0.12's C++ Vocab, which needs torchtext to be read."""


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` uses: pickle with :class:`_VocabUnpickler`."""

    Unpickler = _VocabUnpickler
    load = staticmethod(lambda file, **kw: _VocabUnpickler(file, **kw).load())
    __name__ = "pickle"


def load_vocabulary(path: str) -> Vocabulary:
    """``source_vocab.pt``: a dict (token -> index), a list of tokens, or a classic torchtext
    Vocab, each saved with ``torch.save``; anything else is a clear error saying how to
    save the vocabulary instead."""
    import torch

    how = (
        "save the vocabulary without torchtext, as a dict of token -> index: "
        "torch.save(dict(vocab.get_stoi()), 'source_vocab.pt') (add an '<unk>' entry for "
        "tokens the vocabulary lacks)"
    )
    with open(path, "rb") as f:
        data = f.read()
    try:
        loaded: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            loaded = torch.load(
                io.BytesIO(data),
                map_location="cpu",
                weights_only=False,
                pickle_module=_PickleModule,  # type: ignore[arg-type]
            )
        except _ModernVocab:
            raise RuntimeError(
                f"{os.path.basename(path)} holds a torchtext 0.12+ Vocab, which cannot be "
                f"read without torchtext (and torchtext does not install beside this torch): "
                f"{how}"
            ) from None
        except pickle.UnpicklingError as exc:
            raise RuntimeError(
                f"{os.path.basename(path)} is no vocabulary ({exc}): {how}"
            ) from None
    if isinstance(loaded, _ClassicVocab):
        attributes = loaded.__dict__
        itos, stoi = attributes.get("itos"), attributes.get("stoi")
        if stoi is None and isinstance(itos, list):
            stoi = {token: index for index, token in enumerate(itos)}
        if not isinstance(stoi, dict):
            raise RuntimeError(f"{os.path.basename(path)}: a Vocab without itos / stoi: {how}")
        default = attributes.get("unk_index")
        if default is None and isinstance(stoi, defaultdict) and stoi.default_factory:
            default = stoi.default_factory()
        return Vocabulary(dict(stoi), default if default is not None else stoi.get(UNKNOWN))
    if isinstance(loaded, dict) and all(
        isinstance(k, str) and isinstance(v, int) for k, v in loaded.items()
    ):
        return Vocabulary(dict(loaded), loaded.get(UNKNOWN))
    if isinstance(loaded, (list, tuple)) and all(isinstance(t, str) for t in loaded):
        stoi = {token: index for index, token in enumerate(loaded)}
        return Vocabulary(stoi, stoi.get(UNKNOWN))
    raise RuntimeError(
        f"{os.path.basename(path)} holds a {type(loaded).__name__}, not a vocabulary: {how}"
    )


class TextHandler(BaseHandler, ABC):
    """Base class of the text handlers: the model, its vocabulary, the text helpers."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: Vocabulary | None = None
        self.tokenizer = get_tokenizer("basic_english")
        self.input_text: Any = None
        self.lig: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """BaseHandler's load, then the vocabulary (the manifest's ``sourceVocab``, else
        ``source_vocab.pt`` in the archive)."""
        super().initialize(context)
        self.initialized = False
        source_vocab = self.manifest["model"].get("sourceVocab") if self.manifest else None
        path = source_vocab or self.get_source_vocab_path(context)
        self.source_vocab = load_vocabulary(path)
        self.initialized = True

    def get_source_vocab_path(self, ctx: Any) -> str:
        path = os.path.join(ctx.system_properties.get("model_dir"), "source_vocab.pt")
        if os.path.isfile(path):
            return path
        raise Exception(
            "Missing the source_vocab file. Refer default handler documentation for "
            "details on using text_handler."
        )

    def _expand_contractions(self, text: str) -> str:
        """Contractions expanded (the first letter's case kept), then every ``'`` removed."""

        def expand(match: re.Match[str]) -> str:
            found = match.group(0)
            expanded = CONTRACTION_MAP.get(found) or CONTRACTION_MAP[found.lower()]
            return found[0] + expanded[1:]

        return CONTRACTIONS_PATTERN.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8")

    def _remove_html_tags(self, text: str) -> str:
        return CLEANUP_REGEX.sub("", text)

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(str.maketrans("", "", string.punctuation))

    _remove_puncutation = _remove_punctuation  # the older, misspelled name

    def _tokenize(self, text: str) -> list[str]:
        return self.tokenizer(text)

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        """The tokens without a BPE tokenizer's space mark (``Ġ``)."""
        return [token.replace("\u0120", "") for token in input_tokens]

    def summarize_attributions(self, attributions: Any) -> Any:
        """Attributions through softmax, normalized by the norm of their sums."""
        import torch
        import torch.nn.functional as F

        attributions = F.softmax(attributions, dim=-1)
        return attributions / torch.norm(attributions.sum(dim=-1))
