"""Deadlines for reading a request off a connection, which uvicorn does not have.

uvicorn's ``timeout_keep_alive`` covers only the idle time *between* requests, and any byte
received cancels it: a connection that sends nothing after connecting, or dribbles its header
lines (slowloris), or trickles a body the app never reads, is held open for as long as the client
likes. ASGI middleware cannot help, since the app runs only once the headers are complete.

:class:`DeadlineHttpToolsProtocol` is uvicorn's own httptools protocol with two deadlines,
passed to uvicorn as its ``http`` protocol class (``uvicorn.run(http=...)``, as ``--http``
accepts a class):

- **headers**: from the connection's first moment (or from the first byte of each next request
  on a kept-alive connection) until the request's headers are complete;
- **body**: from the end of the headers until the whole body has been received, read by the app
  or not.

It also bounds the size of a request's headers (httptools buffers a header of any length until
it ends): past ``max_header_bytes`` the client gets 431 and the connection is closed. The count
is of whole reads from the socket while headers are pending: a read that completes the headers
is never refused, and a pipelined request's first bytes, arriving in the read that ends the
previous request, go uncounted, so the bound is exact to within one read.

A connection that misses a deadline is closed (no response: the client is not listening). The
deadline is absolute, so a byte every few seconds does not extend it. Once a request has been
received, the app's own time limit (:class:`service.limits.TimeoutMiddleware`) and uvicorn's
keep-alive timeout take over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import get_settings

logger = logging.getLogger(__name__)

HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 39\r\nconnection: close\r\n\r\nrequest headers are larger than allowed"
)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with header and body read deadlines (see the module).

    The deadlines and the header bound come from the process's settings
    (``ALLIANCE_RISK_HEADER_TIMEOUT_S``, ``ALLIANCE_RISK_BODY_TIMEOUT_S``,
    ``ALLIANCE_RISK_MAX_HEADER_BYTES``): uvicorn builds one protocol per connection from a class
    name, in every worker process, so the environment is what reaches them all.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        settings = get_settings()
        self._header_timeout_s = settings.header_timeout_s
        self._body_timeout_s = settings.body_timeout_s
        self._max_header_bytes = settings.max_header_bytes
        self._read_deadline: asyncio.TimerHandle | None = None
        self._header_bytes: int | None = 0  # None once the headers are complete

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds > 0:
            self._read_deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expired(self, what: str) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            # The peer address is not logged: it can identify a clinic's workstation.
            logger.info("connection closed: request not received in time",
                        extra={"fields": {"phase": what}})  # fmt: skip
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._header_bytes is not None
            and self._header_bytes > self._max_header_bytes
            and not self.transport.is_closing()
        ):
            self._disarm()
            logger.info("connection closed: request headers too large")
            self.transport.write(HEADERS_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._arm(self._header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        super().on_headers_complete()
        self._arm(self._body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_bytes = 0  # what comes next is the next request's headers
        super().on_message_complete()
