"""The class a ``python``-backend model's ``model.py`` subclasses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class PythonModel:
    """Subclass this once in ``<repo>/<model>/<version>/model.py``.

    The server sets ``name``, ``version``, ``path`` (the version folder) and ``config``
    (the model's settings as a dict) before calling :meth:`load` once, then calls
    :meth:`predict` for every request, possibly from several threads when
    ``instances > 1``.
    """

    name: str
    version: str
    path: Path
    config: dict[str, Any]
    # Set True when predict() only computes (a framework's model on the inputs) and never
    # waits for this server, e.g. by calling one of its models over HTTP or gRPC: a request
    # that finds the model idle may then run on the event loop's thread, without the two
    # thread hand-offs (about a fifth of a small model's round trip). See
    # dl_inference.Backend.self_contained.
    self_contained: bool = False

    def load(self) -> None:
        """Prepare the model (read weights beside ``model.py`` from ``self.path``)."""

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        """Named arrays in, named arrays out; raise to fail the request with your message.

        ``parameters`` (the request's) are passed when you take ``**parameters``; keep the
        ``/`` so that a parameter named ``inputs`` reaches you too (without it, such a
        parameter is refused as the client's error). Inputs may be read-only views of the
        request's bytes (zero-copy decoding): copy an array (``x.copy()``) before changing
        it in place.
        """
        raise NotImplementedError(f"{type(self).__name__} must define predict()")

    def unload(self) -> None:
        """Release resources when the model is unloaded."""
