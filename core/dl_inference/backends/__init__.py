"""Backends built into the kernel (registered through the same hook as plugins)."""
