"""Regenerate every protobuf module from the .proto sources (one command, reproducible).

    python scripts/gen_protos.py           # write the generated modules
    python scripts/gen_protos.py --check   # exit 1 if any committed module is stale

Sources and outputs: ``proto/`` -> ``core/``, and ``plugins/<p>/proto/`` -> ``plugins/<p>/``.
Each .proto lives under the path of the package it generates into, so imports resolve.
Generate with the pinned grpcio-tools (requirements/constraints.txt): the generated code
checks the protobuf runtime version it was made for.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def proto_roots() -> list[tuple[Path, Path]]:
    """(source root, output root) pairs for the kernel and every plugin that has protos."""
    pairs = [(ROOT / "proto", ROOT / "core")]
    pairs += [
        (p / "proto", p) for p in sorted((ROOT / "plugins").glob("*")) if (p / "proto").is_dir()
    ]
    return [(src, out) for src, out in pairs if src.is_dir()]


def generate(src: Path, out: Path) -> list[Path]:
    """Run protoc for every .proto under ``src`` into ``out``; returns the files written."""
    from grpc_tools import protoc

    protos = sorted(src.rglob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}"]
    args += [str(p.relative_to(src)) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {src}")
    written = []
    for proto in protos:
        stem = out / proto.relative_to(src).with_suffix("")
        written += [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2.pyi")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args(argv)
    stale = []
    for src, out in proto_roots():
        if not args.check:
            for path in generate(src, out):
                print(f"wrote {path.relative_to(ROOT)}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for fresh in generate(src, Path(tmp)):
                committed = out / fresh.relative_to(tmp)
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(committed.relative_to(ROOT))
    if stale:
        print("stale generated modules (run: python scripts/gen_protos.py):", file=sys.stderr)
        for path in stale:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
