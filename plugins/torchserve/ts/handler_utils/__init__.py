"""``ts.handler_utils``: helpers TorchServe's default handlers use."""
