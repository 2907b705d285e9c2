"""TorchServe's handler API (``ts``) as dl-inference provides it to ``.mar`` handlers.

Written for dl-inference from TorchServe 0.12's documented behaviour: the pieces custom
handlers import (``ts.context.Context``, ``ts.torch_handler.base_handler.BaseHandler``,
``ts.utils.util``). It is not TorchServe: the server is dl-inference
(``dl_inference_torchserve``).
"""

__version__ = "0.12.0"
