"""``ts.torch_handler``: the handler base class (TorchServe's default handlers by name,
``image_classifier`` and the others, are not provided yet)."""
