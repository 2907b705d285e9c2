"""Wire protocols built into the kernel."""
