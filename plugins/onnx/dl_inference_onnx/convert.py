"""``pytorch-to-onnx``: a TorchScript ``.pt`` or a trusted whole-module ``.pth`` to ``.onnx``.

``dl-inference convert model.pt model.onnx --input x:FP32:1,3,32,32`` exports with
``torch.onnx.export`` (the dynamic axes named: ``batch`` for axis 0, ``<input>_<axis>``
for the others), then runs the torch original and the ONNX file (onnxruntime, CPU) on the
sample inputs and on the samples resized along every dynamic axis, and refuses to write
the file when any output differs by more than the tolerance. The ``--input`` names become
the ONNX input names, in the order given. ``--trust-pickle`` allows a pickled whole
module (``torch.save(model)``); unpickling runs code from the file.

Options (``--option KEY=VALUE``): ``opset`` (default 17; 18 with dynamo),
``output_names=a,b`` (default: a dict's keys, else ``output`` or ``output_0``, ...) and
``exporter=torchscript|dynamo``: torch's exporter. ``torchscript`` (default) also takes
TorchScript files; ``dynamo`` (torch.export, what torch recommends for eager modules)
writes through the ``onnxscript`` package, a dependency of this plugin.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference import BackendError, ConfigError, Converter, install_hint, isolated_imports

DEFAULT_OPSET = 17
DEFAULT_DYNAMO_OPSET = 18  # the lowest the dynamo exporter writes without a version conversion


class PyTorchToOnnx(Converter):
    """Exports a PyTorch model to ONNX and checks onnxruntime reproduces its outputs."""

    name = "pytorch-to-onnx"
    sources = ("*.pt", "*.pth")
    targets = (".onnx",)
    options = {
        "opset": f"the ONNX opset (default {DEFAULT_OPSET}, dynamo {DEFAULT_DYNAMO_OPSET})",
        "output_names": "a,b: names of the outputs (default: a dict's keys, else output_N)",
        "exporter": "torchscript (default; takes TorchScript files too) or dynamo "
        "(torch.export; eager modules)",
    }

    def convert(
        self,
        source: Path,
        target: Path,
        *,
        sample_inputs: dict[str, np.ndarray],
        options: dict[str, Any],
        tolerance: float = 1e-4,
        trust_pickle: bool = False,
        dynamic_axes: Mapping[str, Sequence[int]] | None = None,
    ) -> str:
        settings = _Options(options)
        if not sample_inputs:
            raise ConfigError(
                "pytorch-to-onnx needs sample inputs: give --input NAME:DATATYPE:SHAPE once per "
                "model argument, e.g. --input x:FP32:1,3,224,224 (the names become the ONNX "
                "input names)"
            )
        axes = self.dynamic_axes(sample_inputs) if dynamic_axes is None else dynamic_axes
        try:
            import torch
        except ImportError:
            # torch is the plugin's optional extra: the converter is listed without it.
            raise ConfigError(
                f"pytorch-to-onnx reads PyTorch files with torch, which is not installed: "
                f"{install_hint('torch')} (the CPU build is enough)"
            ) from None

        module = load_module(torch, source, trust_pickle=trust_pickle)
        names = list(sample_inputs)
        checks = self.check_inputs(sample_inputs, axes)
        expected = [
            _run_torch(torch, module, inputs, resized=i > 0) for i, inputs in enumerate(checks)
        ]
        output_names = _output_names(settings.output_names, expected[0])
        example = self.export_inputs(sample_inputs, axes)
        with self.staged(target) as staged:
            _export(torch, module, example, staged, names, output_names, axes, settings)
            worst = 0.0
            for inputs, reference in zip(checks, expected, strict=True):
                # Sizes other than the export sample's are what the dynamic axes must take.
                resized = any(a.shape != example[n].shape for n, a in inputs.items())
                got = _run_onnx(staged, inputs, output_names, resized=resized)
                worst = max(worst, _compare(reference, got, output_names, tolerance))
        dynamic = ", ".join(f"{n}:{','.join(map(str, a))}" for n, a in axes.items() if a)
        return (
            f"outputs match (max |difference| {worst:.3g}, tolerance {tolerance:g}) on inputs "
            f"{' and '.join(_shapes(c) for c in checks)}; {settings.exporter} exporter, opset "
            f"{settings.opset}, inputs {', '.join(names)}, outputs {', '.join(output_names)}; "
            f"dynamic axes: {dynamic or 'none'}"
        )


class _Options:
    def __init__(self, values: Mapping[str, Any]) -> None:
        unknown = sorted(set(values) - set(PyTorchToOnnx.options))
        if unknown:
            raise ConfigError(
                f"pytorch-to-onnx has no option {unknown[0]!r}; its options are: "
                f"{', '.join(PyTorchToOnnx.options)}"
            )
        raw_names = values.get("output_names")
        self.output_names = [n for n in str(raw_names).split(",") if n] if raw_names else None
        self.exporter = str(values.get("exporter", "torchscript"))
        if self.exporter not in ("torchscript", "dynamo"):
            raise ConfigError(
                f"--option exporter={self.exporter}: use torchscript (default) or dynamo"
            )
        default = DEFAULT_OPSET if self.exporter == "torchscript" else DEFAULT_DYNAMO_OPSET
        try:
            self.opset = int(values.get("opset", default))
        except ValueError:
            raise ConfigError(f"--option opset={values['opset']}: give a number, e.g. 17") from None


def _shapes(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in inputs.items())


def load_module(torch: Any, source: Path, *, trust_pickle: bool) -> Any:
    """The model in ``source`` in eval mode: TorchScript first, a pickled module if trusted."""
    try:
        with warnings.catch_warnings():
            # torch 2.9+ warns that TorchScript is deprecated; the files still load.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            return torch.jit.load(str(source), map_location="cpu").eval()
    except RuntimeError as exc:
        script_error = exc
    if not trust_pickle:
        raise ConfigError(
            f"{source.name} is not a TorchScript file ({_first_line(script_error)}). If it is a "
            "whole module saved with torch.save(model) and you trust it (unpickling runs code "
            "from the file), pass --trust-pickle; otherwise save it with "
            "torch.jit.script(model).save('model.pt')"
        )
    try:
        # The module's class may live in a .py file beside it, as the server finds it.
        with isolated_imports(source.parent.resolve(), keep=True):
            module = torch.load(str(source), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(
            f"{source.name}: neither TorchScript nor a torch.save() pickle: {exc} (a pickled "
            "module's class must be importable: keep its .py file beside the .pth, as for serving)"
        ) from exc
    if isinstance(module, dict):
        raise ConfigError(
            f"{source.name} holds a state_dict (weights only), not a model; build the module "
            "in Python, load_state_dict() it, and save it whole or as TorchScript"
        )
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{source.name} holds a {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def _run_torch(
    torch: Any, module: Any, inputs: Mapping[str, np.ndarray], *, resized: bool = False
) -> dict[str, np.ndarray]:
    arguments = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
    try:
        with torch.no_grad():
            result = module(*arguments)
    except Exception as exc:
        if resized:
            raise ConfigError(
                "the torch model itself does not run on the samples resized along their "
                f"dynamic axes ({_shapes(inputs)}): {type(exc).__name__}: {_first_line(exc)}; "
                "a traced module keeps the sizes it was traced with. Script it "
                "(torch.jit.script) or trace it without int(x.shape[0]), or keep those axes "
                "static (--static, or --dynamic NAME:AXES with fewer axes)"
            ) from exc
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in inputs.items())
        raise ConfigError(
            f"the torch model raised on the sample inputs ({shapes}): "
            f"{type(exc).__name__}: {_first_line(exc)}; give --input values that match what its "
            "forward() takes"
        ) from exc
    if isinstance(result, dict):
        items = list(result.items())
    elif isinstance(result, list | tuple):
        items = [(None, value) for value in result]
    else:
        items = [(None, result)]
    outputs = {}
    for index, (key, value) in enumerate(items):
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"the model returns a {type(value).__name__} (output {index}); ONNX export "
                "needs tensors, or tuples/lists/dicts of tensors"
            )
        outputs[str(key) if key is not None else f"#{index}"] = value.detach().numpy()
    return outputs


def _output_names(chosen: list[str] | None, outputs: dict[str, np.ndarray]) -> list[str]:
    keys = list(outputs)
    if chosen is not None:
        if len(chosen) != len(keys):
            raise ConfigError(
                f"--option output_names names {len(chosen)} output(s), the model returns "
                f"{len(keys)}"
            )
        return chosen
    if not keys[0].startswith("#"):
        return keys
    return ["output"] if len(keys) == 1 else [f"output_{i}" for i in range(len(keys))]


def _export(
    torch: Any,
    module: Any,
    inputs: dict[str, np.ndarray],
    path: Path,
    names: list[str],
    output_names: list[str],
    axes: Mapping[str, Sequence[int]],
    settings: _Options,
) -> None:
    arguments = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values())
    kwargs: dict[str, Any] = {
        "input_names": names,
        "output_names": output_names,
        "opset_version": settings.opset,
        "dynamo": settings.exporter == "dynamo",
    }
    if settings.exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401 - torch's dynamo exporter imports it itself
        except ImportError:
            raise ConfigError(
                "--option exporter=dynamo needs the onnxscript package, a dependency of "
                f"the plugin: {install_hint('dl-inference-onnx')}; or "
                f"{install_hint('onnxscript')}"
            ) from None
        if isinstance(module, torch.jit.ScriptModule):
            raise ConfigError(
                "--option exporter=dynamo exports eager modules (a pickled .pth), not "
                "TorchScript files: leave the exporter at torchscript for this file"
            )
        # Dim.DYNAMIC lets torch.export find which axes are equal (input_ids' and
        # attention_mask's sequence) instead of the user naming every relation.
        kwargs["dynamic_shapes"] = tuple(
            {a: torch.export.Dim.DYNAMIC for a in axes.get(name, ())} for name in names
        )
    elif any(axes.values()):
        batch = any(0 in axes.get(name, ()) for name in names)
        kwargs["dynamic_axes"] = {
            **{
                name: {a: "batch" if a == 0 else f"{name}_{a}" for a in axes.get(name, ())}
                for name in names
                if axes.get(name)
            },
            # Outputs' other axes follow from the inputs' symbols; a batch-first output
            # must say so, or a computed shape may pin it.
            **({name: {0: "batch"} for name in output_names} if batch else {}),
        }
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), _quiet("torch.onnx"):
            # The TorchScript exporter warns that it is deprecated on every call; the dynamo
            # one prints its progress.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            torch.onnx.export(module, arguments, str(path), **kwargs)
    except Exception as exc:
        raise BackendError(
            f"torch.onnx.export failed ({settings.exporter} exporter, opset {settings.opset}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` says only errors meanwhile (the exporter logs what it skips, e.g.
    torchvision's operators when torchvision is not installed)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_onnx(
    path: Path, inputs: dict[str, np.ndarray], output_names: list[str], *, resized: bool
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        results = session.run(output_names, inputs)
    except Exception as exc:
        hint = ""
        if resized:
            hint = (
                ". The exported graph does not run with other sizes on the dynamic axes: the "
                "model probably builds a shape from the sample's sizes (x.view(1, -1), "
                "x.reshape(n, ...)); use x.flatten(1) / x.reshape(x.shape[0], ...), or keep "
                "those axes static (--static, or --dynamic NAME:AXES with fewer axes)"
            )
        raise BackendError(
            f"onnxruntime cannot run the exported model on inputs {_shapes(inputs)}: "
            f"{_first_line(exc)}{hint}"
        ) from exc
    return dict(zip(output_names, results, strict=True))


def _compare(
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    names: list[str],
    tolerance: float,
) -> float:
    worst = 0.0
    for name, reference in zip(names, expected.values(), strict=True):
        value = got[name]
        if value.shape != reference.shape:
            raise BackendError(
                f"output {name!r}: onnxruntime gives shape {list(value.shape)}, torch "
                f"{list(reference.shape)}; the exported graph fixed a dimension it should not"
            )
        if reference.dtype.kind in "fc":
            difference = (
                float(np.max(np.abs(value.astype(np.float64) - reference))) if value.size else 0.0
            )
            if not difference <= tolerance:  # also catches NaN
                raise BackendError(
                    f"output {name!r} differs between torch and onnxruntime by {difference:.3g} "
                    f"(tolerance {tolerance:g}); the file was not written. Try another --option "
                    "opset, or raise --tolerance if the difference is expected (e.g. fp16)"
                )
        else:
            wrong = int(np.count_nonzero(value != reference))
            if wrong:
                raise BackendError(
                    f"output {name!r}: {wrong} of {reference.size} values differ between torch "
                    "and onnxruntime; the file was not written"
                )
            difference = 0.0
        worst = max(worst, difference)
    return worst


def _first_line(exc: BaseException) -> str:
    """The line of ``exc``'s message that says what went wrong."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "TorchScript interpreter" in lines[0]:
        # A TorchScript error starts with two tracebacks; its reason is the last line
        # ("RuntimeError: Expected ..."), without the type the caller names anyway.
        name, sep, reason = lines[-1].partition(": ")
        return reason if sep and name.endswith("Error") else lines[-1]
    return lines[0]
