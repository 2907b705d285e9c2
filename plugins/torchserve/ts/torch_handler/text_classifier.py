"""``text_classifier``: TorchServe's default text classification handler, by name.

As TorchServe 0.12 documents it (and, like it, for one request at a time: the batch's
first request is classified): the text (``data`` or ``body``, bytes decoded as UTF-8) is
cleaned (HTML removed, lower-cased, contractions expanded, accents and punctuation
removed), tokenized (``basic_english``), extended with its bigrams, and looked up in the
archive's ``source_vocab.pt``; the model is called as ``model(tokens, offsets)`` (an
``EmbeddingBag`` text classifier, offsets ``[0]``), and the answer is every class with its
softmax probability, ``{label: probability, ...}`` named through ``index_to_name.json``.
``/explanations`` answer ``{"importances": [...], "words": [...]}`` from captum's layer
integrated gradients over ``model.embedding`` (captum must be installed; else 501).
"""

from __future__ import annotations

from typing import Any

from ts.handler_utils.text_utils import ngrams_iterator
from ts.torch_handler.text_handler import TextHandler
from ts.utils.util import PredictionException, map_class_to_label


class TextClassifier(TextHandler):
    """A text in, each class's probability out."""

    ngrams = 2

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """The first request's text as the vocabulary's indices of its tokens and bigrams,
        with the tokens (for explanations)."""
        import torch

        line = data[0]
        text = line.get("data") or line.get("body")
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise PredictionException("the text is not UTF-8", 400) from None
        if not isinstance(text, str):
            raise PredictionException(f"the request must be text (got {type(text).__name__})", 400)
        text = self._remove_html_tags(text)
        text = text.lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        text = self._remove_punctuation(text)
        tokens = self._tokenize(text)
        assert self.source_vocab is not None
        indices = [self.source_vocab[token] for token in ngrams_iterator(tokens, self.ngrams)]
        return torch.as_tensor(indices, dtype=torch.int64, device=self.device), tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """``model(tokens, offsets)`` with one bag (offsets ``[0]``)."""
        import torch

        text_tensor, _ = data
        offsets = torch.as_tensor([0], device=self.device)
        return super().inference(text_tensor, offsets)

    def postprocess(self, data: Any) -> list[dict[str, Any]]:
        """Softmax over the classes, every class labelled."""
        import torch.nn.functional as F

        return map_class_to_label(F.softmax(data, dim=1).tolist(), self.mapping)

    def get_insights(self, text_preprocess: Any, _: Any, target: int = 0) -> list[dict[str, Any]]:
        """Token importances by captum's layer integrated gradients over ``model.embedding``."""
        import torch

        try:
            from captum.attr import LayerIntegratedGradients, TokenReferenceBase
        except ImportError:
            raise PredictionException(
                "explanations need captum: install it into the server's environment", 501
            ) from None
        text_tensor, all_tokens = text_preprocess
        if self.lig is None:
            self.lig = LayerIntegratedGradients(self.model, self.model.embedding)
        reference = TokenReferenceBase().generate_reference(
            text_tensor.shape[0], device=self.device
        )
        attributions = self.lig.attribute(
            text_tensor,
            reference.squeeze(0),
            additional_forward_args=(torch.tensor([0], device=self.device)),
            return_convergence_delta=False,
            target=target,
        )
        summed = self.summarize_attributions(attributions)
        return [{"importances": summed.tolist(), "words": self.get_word_token(all_tokens)}]
