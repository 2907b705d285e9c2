"""``ts.torch_handler``: the handler base class and TorchServe's default handlers by name
that dl-inference provides (``image_classifier``, ``image_segmenter``, ``object_detector``,
``text_classifier``)."""
