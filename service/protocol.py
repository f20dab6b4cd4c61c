"""The HTTP protocol uvicorn runs: httptools', with a response's head and the body after it handed to the
socket in one write.

uvicorn writes a response's status line and headers in one call and its body in the next. A replica killed
between the two (SIGKILL, the OOM killer) has sent nginx a head that nginx may already have passed on: it
can then neither finish the answer nor send the request again to another replica, and the client loses it.
Here a head waits for the write that follows it in the same turn of the event loop, and both go to the
socket as one write (one system call, no copy). A head with nothing after it (a `100 Continue`, a stream
whose first chunk comes later) goes out at the next turn. Nothing is reordered: a waiting head is always
written before anything after it, and before the connection closes.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/"
_HEAD_END = b"\r\n\r\n"


class OneWriteTransport:
    """A transport that holds a response head until the next write (see the module's docstring)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif isinstance(data, bytes) and data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a waiting head now."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # everything else (reading, flow control, extra info, closing state) is the socket transport's own
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, OneWriteTransport(transport)))
