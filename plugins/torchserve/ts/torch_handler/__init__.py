"""``ts.torch_handler``: the handler base class and TorchServe's default handlers by name
that dl-inference provides (``image_classifier``; ``text_classifier``, ``object_detector``
and ``image_segmenter`` are not provided yet)."""
