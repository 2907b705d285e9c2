"""``pytorch-to-onnx``: a TorchScript ``.pt`` or a trusted whole-module ``.pth`` to ``.onnx``.

``dl-inference convert model.pt model.onnx --input x:FP32:1,3,32,32`` exports with
``torch.onnx.export``, the batch axis (dimension 0 of every input and output) dynamic,
then runs the torch original and the ONNX file (onnxruntime, CPU) on the sample inputs
and on the same inputs doubled along the batch axis, and refuses to write the file when
any output differs by more than the tolerance. The ``--input`` names become the ONNX
input names, in the order given.

Options (``--option KEY=VALUE``):

- ``trust_pickle=true``: allow a pickled whole module (``torch.save(model)``); unpickling
  runs code from the file, so only for files you trust.
- ``opset=N``: the ONNX opset (default 17).
- ``dynamic_batch=false``: keep every dimension as in the sample inputs.
- ``output_names=a,b``: names of the outputs (default: a dict's keys, else ``output`` or
  ``output_0``, ``output_1``, ...).
- ``exporter=torchscript|dynamo``: torch's exporter (default ``torchscript``, which also
  takes TorchScript files; ``dynamo`` needs the ``onnxscript`` package).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference import BackendError, ConfigError, Converter

DEFAULT_OPSET = 17
OPTIONS = ("trust_pickle", "opset", "dynamic_batch", "output_names", "exporter")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class PyTorchToOnnx(Converter):
    """Exports a PyTorch model to ONNX and checks onnxruntime reproduces its outputs."""

    name = "pytorch-to-onnx"
    sources = ("*.pt", "*.pth")
    targets = (".onnx",)

    def convert(
        self,
        source: Path,
        target: Path,
        *,
        sample_inputs: dict[str, np.ndarray],
        options: dict[str, Any],
        tolerance: float = 1e-4,
    ) -> str:
        settings = _Options.parse(options)
        if not sample_inputs:
            raise ConfigError(
                "pytorch-to-onnx needs sample inputs: give --input NAME:DATATYPE:SHAPE once per "
                "model argument, e.g. --input x:FP32:1,3,224,224 (the names become the ONNX "
                "input names)"
            )
        import torch

        module = load_module(torch, source, trust_pickle=settings.trust_pickle)
        names = list(sample_inputs)
        expected = _run_torch(torch, module, sample_inputs)
        output_names = _output_names(settings.output_names, expected)
        axes = None
        if settings.dynamic_batch:
            axes = {name: {0: "batch"} for name in [*names, *output_names]}
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        try:
            _export(torch, module, sample_inputs, partial, names, output_names, axes, settings)
            checks = [sample_inputs]
            if settings.dynamic_batch:
                checks.append({k: np.concatenate([v, v]) for k, v in sample_inputs.items()})
            worst = 0.0
            for inputs in checks:
                reference = (
                    expected
                    if inputs is sample_inputs
                    else _run_torch(torch, module, inputs, batch_check=True)
                )
                got = _run_onnx(partial, inputs, output_names, dynamic=settings.dynamic_batch)
                worst = max(worst, _compare(reference, got, output_names, tolerance))
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        batches = " and ".join(str(len(next(iter(c.values())))) for c in checks)
        return (
            f"outputs match (max |difference| {worst:.3g}, tolerance {tolerance:g}, batch "
            f"{batches}); opset {settings.opset}, inputs {', '.join(names)}, outputs "
            f"{', '.join(output_names)}"
            + (", dynamic batch axis" if settings.dynamic_batch else "")
        )


class _Options:
    def __init__(self, values: dict[str, Any]) -> None:
        self.trust_pickle = _flag(values, "trust_pickle", False)
        self.dynamic_batch = _flag(values, "dynamic_batch", True)
        try:
            self.opset = int(values.get("opset", DEFAULT_OPSET))
        except ValueError:
            raise ConfigError(f"--option opset={values['opset']}: give a number, e.g. 17") from None
        raw_names = values.get("output_names")
        self.output_names = [n for n in str(raw_names).split(",") if n] if raw_names else None
        self.exporter = str(values.get("exporter", "torchscript"))
        if self.exporter not in ("torchscript", "dynamo"):
            raise ConfigError(
                f"--option exporter={self.exporter}: use torchscript (default) or dynamo"
            )

    @classmethod
    def parse(cls, values: dict[str, Any]) -> _Options:
        unknown = sorted(set(values) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"pytorch-to-onnx has no option {unknown[0]!r}; its options are: "
                f"{', '.join(OPTIONS)}"
            )
        return cls(values)


def _flag(values: dict[str, Any], key: str, default: bool) -> bool:
    if key not in values:
        return default
    value = values[key]
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ConfigError(f"--option {key}={value}: give true or false")


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
            "from the file), pass --option trust_pickle=true; otherwise save it with "
            "torch.jit.script(model).save('model.pt')"
        )
    try:
        module = torch.load(str(source), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(
            f"{source.name}: neither TorchScript nor a torch.save() pickle: {exc} (for a pickled "
            "module, its class must be importable here, as when it was saved)"
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
    torch: Any, module: Any, inputs: dict[str, np.ndarray], *, batch_check: bool = False
) -> dict[str, np.ndarray]:
    arguments = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
    try:
        with torch.no_grad():
            result = module(*arguments)
    except Exception as exc:
        if batch_check:
            batch = len(next(iter(inputs.values())))
            raise ConfigError(
                f"the torch model itself does not run with batch {batch} ({type(exc).__name__}: "
                f"{_first_line(exc)}); a traced module keeps the batch size it was traced with. "
                "Script it (torch.jit.script) or trace it without int(x.shape[0]), or pass "
                "--option dynamic_batch=false to keep the sample's batch"
            ) from exc
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in inputs.items())
        raise ConfigError(
            f"the torch model raised on the sample inputs ({shapes}): {type(exc).__name__}: "
            f"{exc}; give --input values that match what its forward() takes"
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
    axes: dict[str, dict[int, str]] | None,
    settings: _Options,
) -> None:
    arguments = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values())
    kwargs: dict[str, Any] = {
        "input_names": names,
        "output_names": output_names,
        "opset_version": settings.opset,
        "dynamo": settings.exporter == "dynamo",
    }
    if axes is not None:
        kwargs["dynamic_axes"] = axes
    if settings.exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401 - torch's dynamo exporter imports it itself
        except ImportError:
            raise ConfigError(
                "--option exporter=dynamo needs the onnxscript package: pip install onnxscript"
            ) from None
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated on every call.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            torch.onnx.export(module, arguments, str(path), **kwargs)
    except Exception as exc:
        raise BackendError(
            f"torch.onnx.export failed ({settings.exporter} exporter, opset {settings.opset}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _run_onnx(
    path: Path, inputs: dict[str, np.ndarray], output_names: list[str], *, dynamic: bool
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        results = session.run(output_names, inputs)
    except Exception as exc:
        batch = len(next(iter(inputs.values())))
        hint = ""
        if dynamic and batch > 1:
            hint = (
                f". The exported graph does not run with batch {batch}: the model probably "
                "builds a shape from the sample's batch size (x.view(1, -1), x.reshape(n, ...)); "
                "use x.flatten(1) / x.reshape(x.shape[0], ...), or pass "
                "--option dynamic_batch=false"
            )
        raise BackendError(f"onnxruntime cannot run the exported model: {exc}{hint}") from exc
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
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
