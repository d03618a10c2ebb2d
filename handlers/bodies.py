"""Request bodies streamed in and bounded: one over the limit is refused before it is held whole,
and an early error leaves the connection usable."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler, stream_request_body

from server.domain.errors import PayloadTooLarge


@stream_request_body
class BoundedBodyHandler(RequestHandler):
    """A handler whose body is kept only up to `body_limit` (`small_body_limit` unless a route
    raises it), and read to the end before an early error is answered when it is small."""

    def start_body(self, small_body_limit: int) -> None:
        """Called from initialize(). `small_body_limit`: the largest JSON or form body, and the
        largest one read only to be dropped."""
        self.small_body_limit = small_body_limit
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._discarding = False  # an early error: the body is read only to be dropped

    @property
    def body_limit(self) -> int:
        """The largest body this request may have (a route with uploads raises it)."""
        return self.small_body_limit

    def too_large_message(self) -> str:
        return f"request body is larger than {self.body_limit} bytes"

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._body_size += len(chunk)
        if self._body_size <= self.body_limit and not self._discarding:
            self._chunks.append(chunk)
        return None

    @property
    def body(self) -> bytes:
        if self._body_size > self.body_limit:
            raise PayloadTooLarge(self.too_large_message())
        return b"".join(self._chunks)

    def declared_length(self) -> int | None:
        """The body's Content-Length (Tornado has checked it is a number), if it has one."""
        declared = self.request.headers.get("Content-Length")
        return None if declared is None else int(declared)

    def body_unread(self) -> bool:
        body_read = getattr(self.request, "_body_future", None)
        return body_read is not None and not body_read.done()

    async def read_small_body(self) -> None:
        """An error decided before the body is read is answered after it, for a small body.

        Tornado reads a streamed body only once prepare() is done; a reply sent before that
        makes it close the connection after the reply, without saying so, and the client's
        (or nginx's pooled) next request on it fails. A body within the JSON limit (or none)
        is read and dropped first, so the connection stays usable; a larger or chunked one is
        not worth reading, and write_error announces the close instead.
        """
        if self._prepared_future is None or not self.body_unread():
            return
        declared = self.declared_length()
        if declared is None and "Transfer-Encoding" in self.request.headers:
            return
        if declared is not None and declared > self.small_body_limit:
            return
        self._discarding = True
        # What Tornado does after prepare(): let the body be read (into data_received).
        self._prepared_future.set_result(None)
        # A client gone meanwhile: the reply below then goes nowhere, as Tornado expects.
        with contextlib.suppress(StreamClosedError):
            await self.request._body_future
