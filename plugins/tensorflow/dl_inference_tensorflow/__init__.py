"""dl-inference-tensorflow: the ``tensorflow`` backend (SavedModel, every signature).

TF Serving's API comes with it from ``dl-inference-tfserving`` (a dependency), whose
``SignatureBackend`` interface this backend implements. A ``signature_name`` request
parameter selects the signature over every protocol. Importing this module is cheap:
TensorFlow is imported only when a model loads.
"""

from __future__ import annotations

from dl_inference import BackendRegistry, RequestContext, hookimpl
from dl_inference_tfserving.signatures import select_signature

DLI_HOOKSPEC_VERSION = "1.1"


@hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_tensorflow.backend import TensorFlowBackend

    registry.add(TensorFlowBackend)


# trylast: after every other plugin's dli_on_request, which may rewrite the parameters.
@hookimpl(trylast=True)
def dli_on_request(ctx: RequestContext) -> None:
    """A request's ``signature_name`` parameter selects its signature, on every protocol.

    The kernel validates a request against the model's ``inputs()`` right after this hook,
    and ``predict()`` runs the signature the parameter names: selecting it here makes the
    backend's ``inputs()`` / ``outputs()`` describe that same signature (TF Serving's
    protocol also passes the parameter, for the signature its ``model_spec`` names). Any
    request without the parameter gets the model's default signature.
    """
    name = ctx.request.parameters.get("signature_name") if ctx.request is not None else None
    select_signature(name if isinstance(name, str) else None)
