"""dl-inference's own HTTP/1.1 lane for the REST hot path, in front of aiohttp.

The REST listener accepts connections with :class:`~.lane.FastLaneSite`. A connection's
requests for *plain* routes (handlers made with ``CallPath.http_handler(..., plain=True)``,
which use only what :class:`dl_inference.HttpRequest` offers) are parsed and answered
here; the first request that is anything else — another route, a chunked or
``Expect: 100-continue`` body, HTTP/1.0, an ``Upgrade``, a head this parser does not take
as plainly valid, a body over the server's limit — hands the connection, from that
request's first byte, to aiohttp for good. aiohttp's strict parser then answers it as it
always has, so the lane never decides what is malformed: it only recognises the common,
simple case and serves it without aiohttp's per-request machinery.
"""

from dl_inference.server.http1.lane import ENGINES, FastLaneSite, http_engine

__all__ = ["ENGINES", "FastLaneSite", "http_engine"]
