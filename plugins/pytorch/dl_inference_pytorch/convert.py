"""``pytorch-pth``: a trusted whole-module ``model.pth`` to torch.export (``.pt2``) or TorchScript.

    dl-inference convert models/mnist/1/model.pth models/mnist/1/model.pt2 \\
        --trust-pickle --input x:FP32:1,1,28,28

Loads the pickled module (its folder's ``.py`` files importable, as the server does),
exports it (``torch.export``, the dynamic axes as ``torch.export.Dim.DYNAMIC``) or compiles
it (``torch.jit.trace``, or ``--option script=true``), loads the written file back and
checks that its outputs match the original's on the samples and on the samples resized
along every dynamic axis. The server prefers ``model.pt2`` over ``model.pt`` over
``model.pth``, so the converted file is served (without ``trust_pickle``) once it is
written beside the source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import dl_inference

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class PthConverter(dl_inference.Converter):
    """``dl-inference convert model.pth model.pt2|model.pt --trust-pickle --input ...``."""

    name = "pytorch-pth"
    sources = ("*.pth",)
    targets = (".pt2", ".pt")
    options = {
        "script": "true: TorchScript by torch.jit.script instead of tracing (.pt target)",
        "rtol": "relative tolerance of the output comparison (default 1e-5)",
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
        import torch

        script = _flag(options, "script")
        try:
            rtol = float(options.get("rtol", 1e-5))
        except ValueError:
            raise dl_inference.ConfigError(
                f"--option rtol={options['rtol']}: give a number, e.g. 1e-5"
            ) from None
        if not sample_inputs:
            raise dl_inference.ConfigError(
                "give sample inputs: --input NAME:DATATYPE:SHAPE (e.g. x:FP32:1,1,28,28) or "
                "--sample NAME=FILE.npy, once per argument of the module's forward()"
            )
        axes = self.dynamic_axes(sample_inputs) if dynamic_axes is None else dynamic_axes
        module = _load(torch, source, trust_pickle=trust_pickle)
        checks = self.check_inputs(sample_inputs, axes)
        with torch.inference_mode():
            expected = [
                _call(torch, module, inputs, resized=i > 0) for i, inputs in enumerate(checks)
            ]
        example = _tensors(torch, self.export_inputs(sample_inputs, axes))
        pt2 = target.name.endswith(".pt2")
        with self.staged(target) as partial:
            try:
                if pt2:
                    dims = tuple(
                        {a: torch.export.Dim.DYNAMIC for a in axes.get(name, ())}
                        for name in sample_inputs
                    )
                    program = torch.export.export(module, example, dynamic_shapes=dims)
                    torch.export.save(program, str(partial))
                    converted = torch.export.load(str(partial)).module()
                else:
                    _torchscript(torch, module, example, partial, script=script)
                    converted = torch.jit.load(str(partial))
            except dl_inference.DlInferenceError:
                raise
            except Exception as exc:
                kind = "torch.export" if pt2 else "torch.jit." + ("script" if script else "trace")
                raise dl_inference.BackendError(
                    f"{kind} failed: {_reason(exc)}" + (_DYNAMIC_HINT if any(axes.values()) else "")
                ) from exc
            worst = 0.0
            with torch.inference_mode():
                for inputs, reference in zip(checks, expected, strict=True):
                    try:
                        got = converted(*_tensors(torch, inputs))
                    except Exception as exc:
                        raise dl_inference.BackendError(
                            f"the converted model does not run on inputs {_shapes(inputs)}: "
                            f"{_reason(exc)}; {target.name} was not "
                            "written" + _DYNAMIC_HINT
                        ) from exc
                    try:
                        torch.testing.assert_close(got, reference, rtol=rtol, atol=tolerance)
                    except AssertionError as exc:
                        raise dl_inference.BackendError(
                            f"outputs differ from {source.name}'s on inputs {_shapes(inputs)}: "
                            f"{_reason(exc)}; {target.name} was not written"
                        ) from exc
                    worst = max(worst, _max_diff(got, reference))
        from dl_inference_pytorch import _loading

        label = _loading.KIND_LABEL["export" if pt2 else "torchscript"]
        dynamic = ", ".join(f"{n}:{','.join(map(str, a))}" for n, a in axes.items() if a)
        return (
            f"{label}; outputs match the original on inputs "
            f"{' and '.join(_shapes(c) for c in checks)} (max abs diff {worst:.3g}, "
            f"rtol={rtol:g}, atol={tolerance:g}); dynamic axes: {dynamic or 'none'}"
        )


_DYNAMIC_HINT = (
    ". If the model fixes the size of an axis (x.view(1, -1), a Python int taken from "
    "x.shape), write x.flatten(1) / x.reshape(x.shape[0], ...), or keep that axis static "
    "(--static, or --dynamic NAME:AXES with fewer axes)"
)


def _flag(options: Mapping[str, Any], key: str) -> bool:
    text = str(options.get(key, "false")).lower()
    if text not in _TRUE | _FALSE:
        raise dl_inference.ConfigError(f"--option {key}={options[key]}: give true or false")
    return text in _TRUE


def _load(torch: Any, source: Path, *, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise dl_inference.ConfigError(
            f"loading {source.name} unpickles it, which runs any code the file contains; "
            "pass --trust-pickle if you trust it"
        )
    with dl_inference.isolated_imports(source.parent.resolve(), keep=True):
        try:
            module = torch.load(str(source), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise dl_inference.ConfigError(f"cannot load {source}: {_reason(exc)}") from exc
    if isinstance(module, dict):
        raise dl_inference.ConfigError(
            f"{source.name} holds a state_dict (weights only), not a whole module: build the "
            "module in Python, load_state_dict() it and torch.save(module) it whole"
        )
    if not isinstance(module, torch.nn.Module):
        raise dl_inference.ConfigError(
            f"{source.name} holds a {type(module).__name__}, not a whole nn.Module"
        )
    return module.eval()


def _tensors(torch: Any, inputs: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values())


def _shapes(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in inputs.items())


def _call(torch: Any, module: Any, inputs: Mapping[str, np.ndarray], *, resized: bool) -> Any:
    try:
        return module(*_tensors(torch, inputs))
    except Exception as exc:
        if resized:
            raise dl_inference.ConfigError(
                f"the module itself does not run on the samples resized along their dynamic "
                f"axes ({_shapes(inputs)}): {_reason(exc)}; keep "
                "those axes static (--static, or --dynamic NAME:AXES with fewer axes)"
            ) from exc
        raise dl_inference.ConfigError(
            f"the module raised on the sample inputs ({_shapes(inputs)}): "
            f"{_reason(exc)}; give --input values that match what "
            "its forward() takes"
        ) from exc


def _torchscript(
    torch: Any, module: Any, example: tuple[Any, ...], path: Path, *, script: bool
) -> None:
    if script:
        compiled = torch.jit.script(module)
    else:
        with torch.inference_mode(False), torch.no_grad():
            # The written file is checked on every sample set afterwards; torch's own check
            # would stop at the first difference with a less useful error.
            compiled = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(compiled, str(path))


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


def _reason(exc: BaseException) -> str:
    # As the backend reads torch's errors: a TorchScript error's first line only says it
    # failed; its reason is its last.
    from dl_inference_pytorch.backend import torch_reason

    return torch_reason(exc)
