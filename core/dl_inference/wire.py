"""``dl_inference.wire``: the public name of :mod:`dl_inference.spi.wire`.

Routing-key readers in protocol plugins import it as ``from dl_inference import wire`` or
``import dl_inference.wire``; both reach the same module.
"""

from dl_inference.spi.wire import *  # noqa: F403
from dl_inference.spi.wire import __all__  # noqa: F401
