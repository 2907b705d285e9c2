"""Generated protobuf modules (private; regenerate with ``python scripts/gen_protos.py``).

Plugins never import these: codecs in the protocol layers convert at the boundary.
"""
