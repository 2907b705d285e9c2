"""TF Serving semantics over the kernel's RuntimeView, shared by the gRPC and REST front ends.

Every model is reachable: a model whose backend has SignatureDefs (a
:class:`~dl_inference_tfserving.signatures.SignatureBackend`, such as the tensorflow
backend's) answers with them; any other backend is described by one ``serving_default``
predict signature built from the kernel's metadata, and its inputs are keyed by the
model's input names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import any_pb2

from dl_inference import (
    Call,
    ConfigError,
    InferRequest,
    InferResponse,
    InvalidInput,
    ModelNotFound,
    ModelVersionInfo,
    RuntimeView,
    TensorSpec,
    without_task_id,
)
from dl_inference_tfserving import codec, settings
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.model_server_config import platform_error, version_overrides
from dl_inference_tfserving.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    SignatureBackend,
    signature_scope,
)

PROTOCOL = "tfserving"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
CLASSES, SCORES, REGRESS_OUTPUT = "classes", "scores", "outputs"

# Kernel model states -> TF Serving's ModelVersionStatus.State.
_STATES = {
    "LOADING": tfs_pb2.ModelVersionStatus.LOADING,
    "READY": tfs_pb2.ModelVersionStatus.AVAILABLE,
    "UNLOADING": tfs_pb2.ModelVersionStatus.UNLOADING,
    "UNAVAILABLE": tfs_pb2.ModelVersionStatus.END,
}


@dataclass
class Target:
    """A resolved model version and the signature a request addresses."""

    name: str
    version: str
    model: ModelVersionInfo
    signature_name: str
    signature: tfs_pb2.SignatureDef
    has_signatures: bool  # the backend is a SignatureBackend

    def model_spec(self, spec: tfs_pb2.ModelSpec) -> None:
        spec.name = self.name
        if self.version.isdigit():
            spec.version.value = int(self.version)
        spec.signature_name = self.signature_name

    def parameters(self) -> dict[str, Any]:
        # Only SignatureBackends understand signatures; others get no surprise parameter.
        return {"signature_name": self.signature_name} if self.has_signatures else {}


def requested_version(spec: tfs_pb2.ModelSpec) -> str:
    """The version string the kernel resolves: a number, a label, or "" for the newest."""
    if spec.HasField("version"):
        return str(spec.version.value)
    return spec.version_label


def signature_map(model: ModelVersionInfo) -> tfs_pb2.SignatureDefMap:
    """The SignatureDefs of a loaded model version (synthesised for other backends)."""
    backend = model.backend
    if isinstance(backend, SignatureBackend):
        return backend.signature_def_map()
    result = tfs_pb2.SignatureDefMap()
    signature = result.signature_def[DEFAULT_SIGNATURE]
    signature.method_name = PREDICT_METHOD
    for specs, infos in ((model.inputs(), signature.inputs), (model.outputs(), signature.outputs)):
        for spec in specs or ():
            _spec_to_info(spec, infos[spec.name])
    return result


def _spec_to_info(spec: TensorSpec, info: tfs_pb2.TensorInfo) -> None:
    info.name = spec.name
    info.dtype = codec.tf_dtype_for_v2(spec.datatype)
    for dim in spec.shape:
        info.tensor_shape.dim.add().size = dim


class TFServing:
    """Predict, Classify, Regress, MultiInference, metadata and status over a RuntimeView.

    Inference methods take the :class:`~dl_inference.Call` the kernel's call path made for
    the client's call: its context, deadline and failure accounting.
    """

    def __init__(
        self, runtime: RuntimeView, config: settings.TFServingSettings | None = None
    ) -> None:
        self.runtime = runtime
        # plugin_settings.tfserving, read once: dli_configure runs before handlers are built.
        self.settings = config if config is not None else settings.current()

    # -- lookup ----------------------------------------------------------------------------

    def served_name(self, name: str, *, task_suffix: bool = False) -> str:
        """``name``; with ``task_suffix``, the seed's ``<name>-<taskid>`` reduced to ``<name>``."""
        if not name:
            raise InvalidInput("model_spec.name is empty; name the model to call")
        served = self.runtime.model_names()
        if name in served or not task_suffix:
            return name
        base = without_task_id(name)
        return base if base in served else name

    def target(
        self,
        spec: tfs_pb2.ModelSpec,
        call: Call,
        *,
        task_suffix: bool = False,
        default_signature: str = "",
    ) -> Target:
        """Authorize, then resolve model, version and signature; errors name what exists.

        The signature is needed to decode a request, so the model is looked up before the
        runtime's ``infer``: authorization comes first, here, as ``infer`` would do it.
        """
        name = self.served_name(spec.name, task_suffix=task_suffix)
        version = requested_version(spec)
        call.ctx.request = InferRequest(model_name=name, model_version=version, inputs={})
        if not call.ctx.authorized:
            self.runtime.authorize(call.ctx)
        model = self.runtime.resolve_model(name, version)
        signatures = signature_map(model)
        backend = model.backend
        has_signatures = isinstance(backend, SignatureBackend)
        wanted = spec.signature_name or default_signature
        if not wanted:
            wanted = backend.default_signature() if has_signatures else DEFAULT_SIGNATURE
        if wanted not in signatures.signature_def:
            raise InvalidInput(
                f"model {name!r} version {model.version} has no signature {wanted!r}; its "
                f"signatures are: {', '.join(sorted(signatures.signature_def))}"
            )
        signature = signatures.signature_def[wanted]
        return Target(name, model.version, model, wanted, signature, has_signatures)

    # -- Predict ---------------------------------------------------------------------------

    async def predict(
        self, request: tfs_pb2.PredictRequest, call: Call, *, task_suffix: bool = False
    ) -> tfs_pb2.PredictResponse:
        target = self.target(request.model_spec, call, task_suffix=task_suffix)
        # Names first, as TF Serving does: a tensor the signature does not take is never
        # decoded (nor filled out to its declared shape).
        self.check_input_names(target, request.inputs)
        with call.parsing("the PredictRequest's inputs"):
            inputs = codec.tensors_to_numpy(
                request.inputs, fill_limit_bytes=self.runtime.max_message_bytes
            )
        outputs = list(request.output_filter) or None
        if outputs is not None and len(set(outputs)) != len(outputs):
            raise InvalidInput(f"output_filter names an output twice: {outputs}")
        response = await self.infer(target, inputs, call, outputs=outputs)
        reply = tfs_pb2.PredictResponse()
        target.model_spec(reply.model_spec)
        # Typed *_val fields unless the model or server opts into tensor_content, as in
        # TF Serving (predict_response_tensor_serialization_option).
        content = self.settings.tensor_content(target.name)
        for key, array in response.outputs.items():
            codec.from_numpy(array, reply.outputs[key], tensor_content=content)
        return reply

    def check_input_names(self, target: Target, names: Iterable[str]) -> None:
        """Refuse input names the addressed signature does not take (before decoding them).

        The names are the ones the kernel will validate the request against: the model's
        ``inputs()`` for this signature. When those are unknown (``None``), nothing is
        checked here, as the kernel checks nothing either.
        """
        with signature_scope(target.signature_name if target.has_signatures else None):
            specs = target.model.inputs()
        if specs is None:
            return
        expected = {spec.name for spec in specs}
        unknown = sorted(set(names) - expected)
        if unknown:
            raise InvalidInput(
                f"model {target.name!r} signature {target.signature_name!r} has no input named "
                f"{unknown[0]!r}; its inputs are: {', '.join(sorted(expected)) or 'none'}"
            )

    async def infer(
        self,
        target: Target,
        inputs: dict[str, np.ndarray],
        call: Call,
        *,
        outputs: list[str] | None = None,
    ) -> InferResponse:
        """Run one request through the runtime (hooks, validation, executor) on ``target``."""
        request = InferRequest(
            model_name=target.name,
            model_version=target.version,
            inputs=inputs,
            parameters=target.parameters(),
            outputs=outputs,
            deadline=call.deadline,
            id=call.ctx.request_id,
        )
        # The kernel validates against inputs()/outputs(): make them the addressed signature's.
        with signature_scope(target.signature_name if target.has_signatures else None):
            return await self.runtime.infer(request, call.ctx)

    # -- Classify / Regress / MultiInference -----------------------------------------------

    async def classify(
        self, spec: tfs_pb2.ModelSpec, examples: Sequence[bytes], call: Call
    ) -> tuple[Target, tfs_pb2.ClassificationResult]:
        target = self.target(spec, call)
        key = _example_input(target, CLASSIFY_METHOD)
        return target, await self._classify(target, key, examples, call)

    async def regress(
        self, spec: tfs_pb2.ModelSpec, examples: Sequence[bytes], call: Call
    ) -> tuple[Target, tfs_pb2.RegressionResult]:
        target = self.target(spec, call)
        key = _example_input(target, REGRESS_METHOD)
        return target, await self._regress(target, key, examples, call)

    async def _classify(
        self, target: Target, key: str, examples: Sequence[bytes], call: Call
    ) -> tfs_pb2.ClassificationResult:
        response = await self.infer(target, {key: _bytes_array(examples)}, call)
        return classification_result(target, response.outputs, len(examples))

    async def _regress(
        self, target: Target, key: str, examples: Sequence[bytes], call: Call
    ) -> tfs_pb2.RegressionResult:
        response = await self.infer(target, {key: _bytes_array(examples)}, call)
        return regression_result(target, response.outputs, len(examples))

    async def multi_inference(
        self, request: tfs_pb2.MultiInferenceRequest, call: Call
    ) -> tfs_pb2.MultiInferenceResponse:
        """TF Serving's RunMultiInference: every task is checked before any of them runs.

        The tasks address one model and each signature at most once (TF Serving refuses
        a repeated one: "Duplicate evaluation of signature"), each with a Classify or
        Regress signature; then each runs once.
        """
        if not request.tasks:
            raise InvalidInput("MultiInferenceRequest has no tasks; add at least one")
        names = {task.model_spec.name for task in request.tasks}
        if len(names) != 1:
            raise InvalidInput(
                f"all MultiInference tasks must address one model; got {sorted(names)}"
            )
        examples = serialized_examples(request.input)
        tasks: list[tuple[str, Target, str]] = []
        for task in request.tasks:
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise InvalidInput(
                    f"unsupported MultiInference method_name {task.method_name!r}; use "
                    f"{CLASSIFY_METHOD} or {REGRESS_METHOD}"
                )
            target = self.target(task.model_spec, call)
            if any(target.signature_name == seen.signature_name for _, seen, _ in tasks):
                raise InvalidInput(
                    f"Duplicate evaluation of signature: {target.signature_name}; name each "
                    "signature in one task only"
                )
            tasks.append((task.method_name, target, _example_input(target, task.method_name)))
        reply = tfs_pb2.MultiInferenceResponse()
        for method, target, key in tasks:
            result = reply.results.add()
            if method == CLASSIFY_METHOD:
                classes = await self._classify(target, key, examples, call)
                result.classification_result.CopyFrom(classes)
            else:
                values = await self._regress(target, key, examples, call)
                result.regression_result.CopyFrom(values)
            target.model_spec(result.model_spec)
        return reply

    # -- metadata and status ---------------------------------------------------------------

    def metadata(
        self, request: tfs_pb2.GetModelMetadataRequest
    ) -> tfs_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput(
                "GetModelMetadataRequest.metadata_field is empty; ask for 'signature_def'"
            )
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise InvalidInput(
                f"metadata field {unsupported[0]!r} is not supported; "
                "the only one is 'signature_def'"
            )
        name = self.served_name(request.model_spec.name)
        model = self.runtime.resolve_model(name, requested_version(request.model_spec))
        reply = tfs_pb2.GetModelMetadataResponse()
        reply.model_spec.name = name
        reply.model_spec.version.value = int(model.version)
        packed = any_pb2.Any(
            type_url=SIGNATURE_DEF_MAP_URL, value=signature_map(model).SerializeToString()
        )
        reply.metadata["signature_def"].CopyFrom(packed)
        return reply

    async def reload_config(self, request: tfs_pb2.ReloadConfigRequest, call: Call) -> None:
        """TF Serving's HandleReloadConfigRequest: serve exactly the listed models.

        Needs the kernel's model management (``management.enabled``) and its token; each
        base_path must lie inside the management roots. Listed models load (or reload),
        served models that are not listed unload.
        """
        management = self.runtime.management
        if management is None:
            raise ConfigError(
                "HandleReloadConfigRequest needs model management: set management.enabled "
                "in the server config and send the management token "
                "('authorization: Bearer <token>')"
            )
        management.authorize(call.ctx.metadata)
        kind = request.config.WhichOneof("config")
        if kind != "model_config_list":
            raise InvalidInput("only config.model_config_list is supported")
        wanted = list(request.config.model_config_list.config)
        names = [config.name for config in wanted]
        if len(set(names)) != len(names):
            raise InvalidInput("model_config_list names a model twice")
        for config in wanted:
            if why := platform_error(config):
                raise InvalidInput(f"model {config.name!r}: {why}")
            await management.load_path(config.name, config.base_path, version_overrides(config))
        for name in set(management.served()) - set(names):
            await management.unload(name)

    def status(self, spec: tfs_pb2.ModelSpec) -> tfs_pb2.GetModelStatusResponse:
        name = self.served_name(spec.name)
        versions = self.runtime.model_versions(name)
        wanted = requested_version(spec)
        if wanted:
            # A label names a version only through resolve(), which needs it to be ready.
            number = (
                wanted if wanted.isdigit() else self.runtime.resolve_model(name, wanted).version
            )
            versions = [v for v in versions if v.version == number]
            if not versions:
                raise ModelNotFound(f"model {name!r} has no version {wanted!r}")
        reply = tfs_pb2.GetModelStatusResponse()
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            status = reply.model_version_status.add()
            status.version = int(version.version)
            status.state = _STATES.get(version.state, tfs_pb2.ModelVersionStatus.UNKNOWN)
            status.status.SetInParent()  # TF Serving always reports a status, OK included
            if version.state == "UNAVAILABLE":
                status.status.error_code = tfs_pb2.StatusProto.UNKNOWN
                status.status.error_message = version.reason
        return reply


# -- tf.Example inputs and result shaping ----------------------------------------------------


def serialized_examples(data: tfs_pb2.Input) -> list[bytes]:
    """Each Example serialized, context features merged in (the example's own win)."""
    kind = data.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in data.example_list.examples]
    elif kind == "example_list_with_context":
        context = data.example_list_with_context.context
        examples = []
        for example in data.example_list_with_context.examples:
            merged = tfs_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise InvalidInput("the request's input holds no examples; send at least one tf.Example")
    return examples


def _bytes_array(values: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=np.object_)
    array[:] = list(values)
    return array


def _example_input(target: Target, method: str) -> str:
    """The signature's one serialized-Example input key, or InvalidInput saying why not.

    A signature qualifies by its method_name or, for TF2 SavedModels (always "predict"),
    by its shape: one string input, and the outputs the method produces.
    """
    outputs = (CLASSES, SCORES) if method == CLASSIFY_METHOD else (REGRESS_OUTPUT,)
    signature = target.signature
    verb = "Classify" if method == CLASSIFY_METHOD else "Regress"
    keys = list(signature.inputs)
    shaped = (
        len(keys) == 1
        and signature.inputs[keys[0]].dtype == codec.DT.DT_STRING
        and any(name in signature.outputs for name in outputs)
    )
    if signature.method_name == method or shaped:
        if len(keys) != 1:
            raise InvalidInput(f"signature {target.signature_name!r} must have exactly one input")
        return keys[0]
    raise InvalidInput(
        f"{verb} needs a signature with method_name {method} (or one string input of "
        f"serialized tf.Example and output(s) {', '.join(outputs)}); signature "
        f"{target.signature_name!r} of model {target.name!r} has method_name "
        f"{signature.method_name or 'none'!r} and inputs {', '.join(keys) or 'none'}"
    )


def _rows(target: Target, outputs: Mapping[str, np.ndarray], key: str, count: int) -> np.ndarray:
    array = np.asarray(outputs[key])
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != count:
        raise InvalidInput(
            f"output {key!r} of signature {target.signature_name!r} has shape "
            f"{list(array.shape)}; expected [{count}, N] for {count} example(s)"
        )
    return array


def classification_result(
    target: Target, outputs: Mapping[str, np.ndarray], count: int
) -> tfs_pb2.ClassificationResult:
    classes = _rows(target, outputs, CLASSES, count) if CLASSES in outputs else None
    scores = _rows(target, outputs, SCORES, count) if SCORES in outputs else None
    if classes is None and scores is None:
        raise InvalidInput(
            f"signature {target.signature_name!r} returned neither 'classes' nor 'scores'"
        )
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise InvalidInput(
            f"'classes' {list(classes.shape)} and 'scores' {list(scores.shape)} differ in shape"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = tfs_pb2.ClassificationResult()
    for row in range(count):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = (
                    label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
                )
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regression_result(
    target: Target, outputs: Mapping[str, np.ndarray], count: int
) -> tfs_pb2.RegressionResult:
    if REGRESS_OUTPUT not in outputs:
        raise InvalidInput(f"signature {target.signature_name!r} returned no 'outputs' tensor")
    values = _rows(target, outputs, REGRESS_OUTPUT, count)
    if values.shape[1] != 1:
        raise InvalidInput(
            f"regression output has shape {list(values.shape)}; expected [{count}] or [{count}, 1]"
        )
    result = tfs_pb2.RegressionResult()
    for value in values[:, 0]:
        result.regressions.add().value = float(value)
    return result
