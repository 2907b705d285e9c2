"""The kernel: plugin host, the one request pipeline, models, batching, processor.py, config."""
