"""``dl-inference-convert``: turn a trusted ``model.pth`` into ``.pt2`` or TorchScript.

    dl-inference-convert models/mnist/1/model.pth --trust-pickle --to pt2 \\
        --input-shape 1,1,28,28

Loads the pickled module (its folder's ``.py`` files importable, as the server does),
exports it (``torch.export``, batch dimension dynamic unless ``--static``) or compiles it
(``torch.jit.trace``, or ``--script``), writes the result beside the source (or to
``--output``), loads the written file back and checks that its outputs match the
original's on sample inputs (``--sample x.npy`` files, else seeded random ones of
``--input-shape``). Exit status: 0 when they match, 1 when they do not, 2 on a usage or
loading error. The server prefers ``model.pt2`` over ``model.pt`` over ``model.pth``, so
the converted file is served (without ``trust_pickle``) once it is written.

The kernel's command line has no hook for plugin subcommands yet; this is the plugin's
own console script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

import dl_inference

TARGETS = {"pt2": ".pt2", "torchscript": ".pt"}
INPUT_DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")


class ConvertError(Exception):
    """A usage or loading problem, reported as one line with exit status 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,1,28,28"`` -> ``(1, 1, 28, 28)``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,1,28,28") from None
    if not shape or any(dim <= 0 for dim in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions must be positive integers")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-inference-convert",
        description="Convert a trusted whole-module model.pth into torch.export (.pt2) or "
        "TorchScript (.pt), and check that outputs match on sample inputs.",
    )
    parser.add_argument("source", type=Path, help="the model.pth (torch.save of a whole module)")
    parser.add_argument("--to", choices=sorted(TARGETS), default="pt2", help="target format")
    parser.add_argument("-o", "--output", type=Path, help="where to write (default: beside source)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: loading a .pth runs code from the file; say that you trust it",
    )
    parser.add_argument(
        "--input-shape",
        type=parse_shape,
        action="append",
        default=[],
        help="shape of one model input, batch first (repeat for several inputs)",
    )
    parser.add_argument(
        "--input-dtype", choices=INPUT_DTYPES, default="float32", help="dtype of random inputs"
    )
    parser.add_argument(
        "--sample", type=Path, action="append", default=[], help=".npy file per model input"
    )
    parser.add_argument(
        "--static", action="store_true", help="pt2: do not make the batch dimension dynamic"
    )
    parser.add_argument("--script", action="store_true", help="torchscript: script, not trace")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return convert(args)
    except ConvertError as exc:
        print(f"dl-inference-convert: error: {exc}", file=sys.stderr)
        return 2


def convert(args: argparse.Namespace) -> int:
    import torch

    from dl_inference_pytorch import _loading

    source: Path = args.source
    if not source.is_file():
        raise ConvertError(f"{source} does not exist")
    if not args.trust_pickle:
        raise ConvertError(
            f"loading {source.name} unpickles it, which runs any code the file contains; "
            "pass --trust-pickle if you trust it"
        )
    samples = _samples(args)
    with _loading.isolated_imports(source.parent.resolve(), keep=True):
        try:
            module = torch.load(str(source), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ConvertError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ConvertError(f"{source} holds a {type(module).__name__}, not a whole nn.Module")
    module.eval()
    output = args.output or source.with_suffix(TARGETS[args.to])
    checks = [samples] if args.static else [samples, _rebatch(samples, 3)]
    with torch.inference_mode():
        expected = [module(*inputs) for inputs in checks]
    try:
        if args.to == "pt2":
            _export(module, samples, output, static=args.static)
            converted = torch.export.load(str(output)).module()
        else:
            _torchscript(module, samples, output, script=args.script)
            converted = torch.jit.load(str(output))
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(
            f"{args.to} conversion failed: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    worst = 0.0
    with torch.inference_mode():
        for inputs, reference in zip(checks, expected, strict=True):
            got = converted(*inputs)
            try:
                torch.testing.assert_close(got, reference, rtol=args.rtol, atol=args.atol)
            except AssertionError as exc:
                batch = inputs[0].shape[0] if inputs and inputs[0].dim() else "?"
                print(
                    f"dl-inference-convert: MISMATCH on batch size {batch}: {exc}",
                    file=sys.stderr,
                )
                return 1
            worst = max(worst, _max_diff(got, reference))
    label = _loading.KIND_LABEL["export" if args.to == "pt2" else "torchscript"]
    print(
        f"wrote {output} ({label}); outputs match the original on {len(checks)} sample "
        f"input set(s) (max abs diff {worst:.3g}, rtol={args.rtol}, atol={args.atol})"
    )
    return 0


def _samples(args: argparse.Namespace) -> list[Any]:
    import torch

    if args.sample:
        try:
            return [torch.from_numpy(np.load(path)) for path in args.sample]
        except (OSError, ValueError) as exc:
            raise ConvertError(f"cannot read a --sample file: {exc}") from exc
    if not args.input_shape:
        raise ConvertError(
            "give sample inputs: --input-shape 1,1,28,28 (per input) or --sample x.npy"
        )
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.input_dtype)
    tensors = []
    for shape in args.input_shape:
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            tensors.append(torch.randint(0, 10, shape, generator=generator).to(dtype))
    return tensors


def _rebatch(samples: list[Any], size: int) -> list[Any]:
    """The samples with batch ``size`` (rows repeated), to check the dynamic dimension."""
    import torch

    out = []
    for tensor in samples:
        if tensor.dim() == 0:
            return samples
        repeats = -(-size // tensor.shape[0])
        out.append(torch.cat([tensor] * repeats)[:size])
    return out


def _export(module: Any, samples: list[Any], output: Path, *, static: bool) -> None:
    import torch
    from torch.export import Dim

    example = tuple(samples)
    dynamic = None
    if not static:
        # A batch of 1 would be specialised as a constant: export on a batch of 2.
        example = tuple(_rebatch(samples, max(2, samples[0].shape[0] if samples else 2)))
        batch = Dim("batch")
        dynamic = tuple({0: batch} if t.dim() else {} for t in example)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    torch.export.save(program, str(output))


def _torchscript(module: Any, samples: list[Any], output: Path, *, script: bool) -> None:
    import torch

    if script:
        compiled = torch.jit.script(module)
    else:
        with torch.inference_mode(False), torch.no_grad():
            # The written file is checked below on every sample set; torch's own check would
            # stop at the first difference with a less useful error.
            compiled = torch.jit.trace(module, tuple(samples), check_trace=False)
    torch.jit.save(compiled, str(output))


def _max_diff(got: Any, expected: Any) -> float:
    import torch

    if isinstance(got, torch.Tensor):
        if got.numel() == 0:
            return 0.0
        return float((got.double() - expected.double()).abs().max())
    if isinstance(got, dict):
        return max((_max_diff(got[k], expected[k]) for k in got), default=0.0)
    if isinstance(got, tuple | list):
        return max((_max_diff(a, b) for a, b in zip(got, expected, strict=True)), default=0.0)
    return 0.0


if __name__ == "__main__":
    raise SystemExit(main())


class PthConverter(dl_inference.Converter):
    """``dl-inference convert model.pth model.pt2|model.pt --option trust_pickle=true``.

    The kernel command's front for :func:`convert`: its sample inputs are written to
    ``.npy`` files and passed as ``--sample``, its tolerance is the absolute tolerance.
    """

    name = "pytorch-pth"
    sources = ("*.pth",)
    targets = (".pt2", ".pt")

    def convert(
        self,
        source: Path,
        target: Path,
        *,
        sample_inputs: dict[str, np.ndarray],
        options: dict[str, Any],
        tolerance: float = 1e-4,
    ) -> str:
        import tempfile

        unknown = set(options) - {"trust_pickle", "static", "script", "rtol"}
        if unknown:
            raise dl_inference.ConfigError(
                f"--option {sorted(unknown)[0]}: unknown; this converter takes trust_pickle, "
                "static, script and rtol"
            )
        flag = lambda key: str(options.get(key, "false")).lower() in ("1", "true", "yes")  # noqa: E731
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for index, array in enumerate(sample_inputs.values()):
                path = Path(tmp) / f"input{index}.npy"
                np.save(path, array)
                paths.append(path)
            args = argparse.Namespace(
                source=source,
                to="pt2" if target.name.endswith(".pt2") else "torchscript",
                output=target,
                trust_pickle=flag("trust_pickle"),
                input_shape=[],
                input_dtype="float32",
                sample=paths,
                static=flag("static"),
                script=flag("script"),
                rtol=float(options.get("rtol", 1e-5)),
                atol=tolerance,
            )
            try:
                status = convert(args)
            except ConvertError as exc:
                raise dl_inference.ConfigError(str(exc)) from None
        if status != 0:
            raise dl_inference.BackendError(
                f"the converted model's outputs differ from {source.name}'s; {target} was "
                "written but should not be served"
            )
        return "outputs match the original"
