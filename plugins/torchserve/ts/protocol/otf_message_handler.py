"""``ts.protocol.otf_message_handler``: a handler's intermediate answers (streaming).

TorchServe 0.12 lets a handler answer a request several times while ``handle`` runs:
:func:`send_intermediate_predict_response` sends one answer per request of the batch at
once, and the answer ``handle`` returns is the last. Over REST they arrive as the chunks of
one chunked HTTP response, over gRPC as the messages of ``StreamPredictions``. Each
intermediate answer is encoded as a final one is (bytes as they are, ``str`` as UTF-8, a
tensor ``torch.save``\\d, anything else as JSON indented by 2) and marks its request's
response header ``ts_stream_next: true``; the final answer then carries ``false``.

dl-inference serves an archive as streaming when one of its Python files names
``send_intermediate_predict_response`` (see the plugin's README).
"""

from __future__ import annotations

from typing import Any


class StreamClosed(Exception):
    """Raised by :func:`send_intermediate_predict_response` when nobody listens any more
    (the client went away): the handler stops there."""


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: dict[int, str], message: str, code: int, context: Any = None
) -> None:
    """Send ``ret`` (one answer per request of the batch, by index as ``req_id_map``
    numbers them) as intermediate answers; ``message`` and ``code`` describe the batch
    (TorchServe uses them only without a ``context``, which is required here)."""
    if context is None:
        raise ValueError(
            "send_intermediate_predict_response needs the handler's context (its requests' "
            "status and headers come from it)"
        )
    send = getattr(context, "send_intermediate", None)
    if send is None:
        raise RuntimeError(
            "send_intermediate_predict_response: this model is not served as streaming "
            "(dl-inference serves an archive as streaming when one of its Python files "
            "names send_intermediate_predict_response)"
        )
    for index in req_id_map:
        context.set_response_header(index, "ts_stream_next", "true")
    send([ret[index] for index in req_id_map])
