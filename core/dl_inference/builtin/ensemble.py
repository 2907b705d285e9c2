"""The built-in ``ensemble`` backend: Triton's ``platform: "ensemble"`` models, whose
``ensemble_scheduling`` steps run other models of this server, tensors passed in process.

A step is ``{model_name, model_version, input_map, output_map}``: ``model_version`` -1
(or 0) is the step model's newest ready version; ``input_map`` maps the step model's input
names to ensemble tensors (the ensemble's inputs or what earlier steps produce),
``output_map`` its output names to ensemble tensors. The rules, as Triton documents them:

- a step runs as soon as every tensor it reads exists (the steps form a graph: independent
  steps run concurrently); arrays go from step to step as they are, never copied;
- the answer holds the ensemble's declared outputs, each produced by some step;
- load: the graph is checked first (a tensor produced twice, one read and produced by no
  step, an output nobody produces, a cycle: errors naming the step); then the ensemble
  waits for its step models to finish loading and turns READY only when every one is
  ready and each mapped name is an input / output of that model with the same data type;
- a request is validated against the ensemble's own inputs (``max_batch_size``, dims), each
  step's call against the step model's; a step's error reaches the client with its class
  (a python model's ``INVALID_ARG`` is 400) and names the ensemble and the step;
- a step model unloaded later: the ensemble's requests fail with 503 / UNAVAILABLE naming
  the step (the ensemble itself stays listed READY);
- statistics: each step counts in its model's statistics (executions, successes,
  failures), the ensemble in its own, as on Triton;
- its model configuration (``/v2/models/{m}/config``, gRPC ``ModelConfig``) is Triton's for
  an ensemble: ``platform: "ensemble"``, no backend, the ``ensemble_scheduling`` steps as
  loaded, no instance group (see :mod:`dl_inference.builtin.v2.model_config`).

The backend reaches the other models through :attr:`Backend.models` (a
:class:`~dl_inference.spi.backend.ModelRunner`) from an ``async def predict``, which the
kernel runs on the event loop: an ensemble holds no thread while its steps run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference.kernel.config.triton_config import read_config_pbtxt
from dl_inference.spi.backend import Backend
from dl_inference.spi.errors import (
    BackendError,
    ConfigError,
    DlInferenceError,
    ModelNotFound,
    ModelNotReady,
    Unavailable,
)
from dl_inference.spi.types import TensorSpec

# How long a loading ensemble waits for its step models to leave LOADING (a large model
# loads slowly; two ensembles using each other never would): after that its load fails
# and is retried like any failed load.
WAIT_FOR_STEPS_S = 600.0


@dataclass(frozen=True)
class Step:
    """One ``ensemble_scheduling.step``: the model it runs and how its tensors map."""

    index: int
    model: str
    version: str  # "" = the newest ready version (Triton's -1)
    inputs: dict[str, str]  # step model input -> ensemble tensor
    outputs: dict[str, str]  # step model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index} (model {self.model!r})"


def read_steps(document: dict[str, Any], where: str) -> list[Step]:
    """The steps of a config.pbtxt document (:func:`read_config_pbtxt`'s form)."""
    scheduling = document.get("ensemble_scheduling") or {}
    steps = []
    for index, step in enumerate(scheduling.get("step", [])):
        model = str(step.get("model_name", ""))
        if not model:
            raise ConfigError(f"{where}: ensemble_scheduling step {index}: model_name is empty")
        if step.get("model_namespace"):
            raise ConfigError(
                f"{where}: ensemble_scheduling step {index}: model_namespace is not supported"
            )
        number = int(step.get("model_version", -1))
        steps.append(
            Step(
                index,
                model,
                "" if number <= 0 else str(number),
                dict(step.get("input_map", {})),
                dict(step.get("output_map", {})),
            )
        )
    if not steps:
        raise ConfigError(f"{where}: ensemble_scheduling has no step")
    return steps


def check_graph(
    steps: list[Step], inputs: Iterable[str], outputs: Iterable[str], where: str
) -> list[Step]:
    """Check the steps' data flow; return the steps in an order they can run in.

    ConfigError names the step: an ensemble tensor produced twice or that overwrites an
    ensemble input, one a step reads that nothing produces, an ensemble output no step
    produces, steps that wait on each other (a cycle).
    """
    inputs, outputs = list(inputs), list(outputs)
    producer: dict[str, Step] = {}
    for step in steps:
        if not step.inputs:
            raise ConfigError(f"{where}: ensemble {step.label}: input_map is empty")
        if not step.outputs:
            raise ConfigError(f"{where}: ensemble {step.label}: output_map is empty")
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ConfigError(
                    f"{where}: ensemble {step.label}: output_map writes {tensor!r}, an input "
                    "of the ensemble; give the step's output another name"
                )
            if tensor in producer:
                raise ConfigError(
                    f"{where}: ensemble {step.label}: ensemble tensor {tensor!r} is already "
                    f"the output of {producer[tensor].label}; each tensor has one producer"
                )
            producer[tensor] = step
    for step in steps:
        for name, tensor in step.inputs.items():
            if tensor not in producer and tensor not in inputs:
                raise ConfigError(
                    f"{where}: ensemble {step.label}: input {name!r} reads {tensor!r}, which "
                    f"is neither an input of the ensemble ({', '.join(inputs) or 'none'}) nor "
                    "the output of a step"
                )
    for tensor in outputs:
        if tensor not in producer:
            raise ConfigError(
                f"{where}: ensemble output {tensor!r} is produced by no step (output_map "
                "values name what steps produce)"
            )
    # Kahn's order: what runs once the ensemble's inputs exist, then what that unlocks.
    available, ordered, left = set(inputs), [], list(steps)
    while left:
        ready = [s for s in left if set(s.inputs.values()) <= available]
        if not ready:
            names = ", ".join(s.label for s in left)
            raise ConfigError(
                f"{where}: ensemble steps wait on each other's outputs (a cycle): {names}"
            )
        for step in ready:
            ordered.append(step)
            available.update(step.outputs.values())
            left.remove(step)
    return ordered


class EnsembleBackend(Backend):
    """Runs config.pbtxt's ``ensemble_scheduling`` steps on the server's models."""

    name = "ensemble"
    triton_platforms = ("ensemble",)
    merges_requests = False

    @classmethod
    def can_load(cls, path: Path) -> bool:
        return False  # only config.pbtxt's platform: "ensemble" names this backend

    def load(self) -> None:
        where = str(self.path.parent / "config.pbtxt")
        if not self.config.inputs or not self.config.outputs:
            raise ConfigError(f"{where}: an ensemble declares its input and output tensors")
        # Kept as loaded: /config shows the steps this ensemble runs, whatever the file
        # says since.
        self._document = read_config_pbtxt(self.path.parent)
        self.steps = read_steps(self._document, where)
        self.step_models = {step.model for step in self.steps}
        check_graph(
            self.steps,
            (t.name for t in self.config.inputs),
            (t.name for t in self.config.outputs),
            where,
        )
        if self.models is None:
            raise BackendError(f"{where}: an ensemble runs inside a server (no models to call)")
        self._wait_for_steps()
        self._check_steps(where)

    def _wait_for_steps(self) -> None:
        """Until no step model is LOADING (they load beside the ensemble at start-up)."""
        assert self.models is not None
        deadline = time.monotonic() + WAIT_FOR_STEPS_S
        while True:
            loading = []
            for model in sorted(self.step_models):
                try:
                    versions = self.models.versions(model)
                except ModelNotFound:
                    continue  # reported by _check_steps
                if any(v.state == "LOADING" for v in versions):
                    loading.append(model)
                    other = next(v.backend for v in versions if v.state == "LOADING")
                    if self.model_name in getattr(other, "step_models", ()):
                        raise ConfigError(
                            f"ensembles {self.model_name!r} and {model!r} use each other"
                        )
            if not loading:
                return
            if time.monotonic() > deadline:
                raise BackendError(
                    f"step models still loading after {WAIT_FOR_STEPS_S:.0f} s: "
                    f"{', '.join(loading)}"
                )
            time.sleep(0.05)

    def _check_steps(self, where: str) -> None:
        """Every step model ready, every mapped name one of its tensors, the same types."""
        assert self.models is not None
        types = {t.name: t.datatype for t in self.config.inputs or []}
        step_inputs: dict[int, dict[str, TensorSpec]] = {}
        for step in self.steps:
            try:
                info = self.models.resolve(step.model, step.version)
            except (ModelNotFound, ModelNotReady) as exc:
                raise BackendError(f"ensemble {step.label} cannot run: {exc}") from None
            own_inputs = {s.name: s for s in info.backend.inputs() or []}
            own_outputs = {s.name: s for s in info.backend.outputs() or []}
            step_inputs[step.index] = own_inputs
            for kind, mapped, own in (
                ("input", step.inputs, own_inputs),
                ("output", step.outputs, own_outputs),
            ):
                for name in mapped:
                    if name not in own:
                        raise ConfigError(
                            f"{where}: ensemble {step.label}: {kind}_map names {name!r}, which "
                            f"is not an {kind} of {step.model!r} "
                            f"(its {kind}s: {', '.join(own) or 'none'})"
                        )
            missing = sorted(set(own_inputs) - set(step.inputs))
            if missing:
                raise ConfigError(
                    f"{where}: ensemble {step.label}: input_map leaves out the model's inputs "
                    f"{', '.join(missing)}"
                )
            for name, tensor in step.outputs.items():
                types[tensor] = own_outputs[name].datatype
            self._check_batching(step, info.backend.config.max_batch_size, where)
        for step in self.steps:
            for name, tensor in step.inputs.items():
                spec = step_inputs[step.index][name]
                if types.get(tensor, spec.datatype) != spec.datatype:
                    raise ConfigError(
                        f"{where}: ensemble {step.label}: input {name!r} takes {spec.datatype}, "
                        f"and ensemble tensor {tensor!r} is {types[tensor]}"
                    )
        for spec in self.config.outputs or []:
            if types.get(spec.name, spec.datatype) != spec.datatype:
                raise ConfigError(
                    f"{where}: ensemble output {spec.name!r} is {spec.datatype}, and the step "
                    f"producing it gives {types[spec.name]}"
                )

    def _check_batching(self, step: Step, step_batch: int, where: str) -> None:
        # The ensemble's batch goes to every step whole: a step must take as many rows.
        batch = self.config.max_batch_size
        if batch > 0 and step_batch < batch:
            raise ConfigError(
                f"{where}: ensemble {step.label}: the ensemble's max_batch_size {batch} is "
                f"larger than the model's ({step_batch}); lower the ensemble's"
            )

    @property
    def platform(self) -> str:
        return "ensemble"

    def triton_config(self) -> dict[str, Any] | None:
        """The config.pbtxt this ensemble was loaded from (its steps included)."""
        return getattr(self, "_document", None) or super().triton_config()

    async def predict(
        self, inputs: dict[str, np.ndarray], /, **parameters: Any
    ) -> dict[str, np.ndarray]:
        """Run the steps as their inputs become available; the declared outputs."""
        assert self.models is not None
        tensors = dict(inputs)
        waiting = list(self.steps)
        running: dict[asyncio.Task[dict[str, np.ndarray]], Step] = {}
        try:
            while waiting or running:
                for step in [s for s in waiting if set(s.inputs.values()) <= tensors.keys()]:
                    waiting.remove(step)
                    arrays = {name: tensors[t] for name, t in step.inputs.items()}
                    task = asyncio.ensure_future(self._run_step(step, arrays, parameters))
                    running[task] = step
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    outputs = task.result()  # a step's error ends the request
                    for name, tensor in step.outputs.items():
                        if name not in outputs:
                            raise BackendError(
                                f"ensemble {self.model_name!r} {step.label} returned no "
                                f"output {name!r}"
                            )
                        tensors[tensor] = outputs[name]
        finally:
            for task in running:
                task.cancel()
        return {spec.name: tensors[spec.name] for spec in self.config.outputs or []}

    async def _run_step(
        self, step: Step, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        assert self.models is not None
        where = f"in ensemble {self.model_name!r}, {step.label}"
        try:
            info = self.models.resolve(step.model, step.version)
        except (ModelNotFound, ModelNotReady) as exc:
            # The ensemble's client asked for the ensemble: not its 404.
            raise Unavailable(f"{where} cannot run: {exc}") from None
        try:
            return await self.models.infer(info.name, info.version, inputs, parameters)
        except DlInferenceError as exc:
            # The step's error class (a python model's INVALID_ARG stays 400), named.
            raise _renamed(exc, f"{where}: {exc}") from exc


def _renamed(error: DlInferenceError, message: str) -> DlInferenceError:
    """``error``'s class with ``message`` (the base class when that one takes no message)."""
    try:
        return type(error)(message)
    except Exception:
        return BackendError(message)
