"""A response's head and body leave in one write: the transport wrapper against a transport that records
what reaches the socket's side, and uvicorn serving through the protocol over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from service.protocol import OneWriteHttpToolsProtocol, OneWriteTransport
from tests.live_server import free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """The socket's side of the wrapper: every call that reaches it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", [bytes(data)]))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", [bytes(data) for data in list_of_data]))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.calls.append(("close", []))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


def wrapped() -> tuple[OneWriteTransport, Recording]:
    recording = Recording()
    return OneWriteTransport(recording), recording


async def _turn() -> None:
    await asyncio.sleep(0)  # callbacks scheduled with call_soon run before the sleeping task resumes
    await asyncio.sleep(0)


def test_a_head_and_the_body_after_it_in_the_same_turn_are_one_write() -> None:
    async def scenario() -> list[tuple[str, list[bytes]]]:
        transport, recording = wrapped()
        transport.write(HEAD)
        assert recording.calls == []  # the head waits for its body
        transport.write(b"{}")
        await _turn()
        return recording.calls

    assert asyncio.run(scenario()) == [("writelines", [HEAD, b"{}"])]


def test_a_head_with_nothing_after_it_goes_out_at_the_next_turn_and_before_a_close() -> None:
    async def alone() -> list[tuple[str, list[bytes]]]:
        transport, recording = wrapped()
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _turn()
        transport.write(b"data")  # not a head: straight through
        return recording.calls

    async def closed() -> list[tuple[str, list[bytes]]]:
        transport, recording = wrapped()
        transport.write(HEAD)
        transport.close()
        await _turn()  # the scheduled flush finds nothing left to write
        return recording.calls

    assert asyncio.run(alone()) == [("write", [b"HTTP/1.1 100 Continue\r\n\r\n"]), ("write", [b"data"])]
    assert asyncio.run(closed()) == [("write", [HEAD]), ("close", [])]


def test_the_wrapper_keeps_the_order_and_hands_everything_else_to_the_transport() -> None:
    async def scenario() -> tuple[list[tuple[str, list[bytes]]], Any]:
        transport, recording = wrapped()
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.write(HEAD)  # a second head after a waiting one: both now, in order
        transport.write(b"{}")
        await _turn()
        return recording.calls, transport.get_extra_info("sockname")

    calls, sockname = asyncio.run(scenario())
    assert calls == [("writelines", [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD]), ("write", [b"{}"])]
    assert sockname == ("127.0.0.1", 8000)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/plain` answers at once; `/stream` sends its head, then its chunks 0.6 s apart."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for chunk in (b"one", b"two"):
        await asyncio.sleep(0.6)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def serving() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http=OneWriteHttpToolsProtocol)
    config.log_level, config.access_log = "warning", False
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


def test_uvicorn_serves_through_the_protocol() -> None:
    with serving() as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):  # keep-alive: the next request on the same connection
            connection.request("POST", "/plain", body=b"{}", headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            assert (answer.status, answer.read()) == (200, b"ok")
        started = time.monotonic()
        connection.request("GET", "/stream")
        answer = connection.getresponse()  # the head, though no chunk has come yet
        head_after = time.monotonic() - started
        assert answer.status == 200 and answer.getheader("transfer-encoding") == "chunked"
        assert answer.read() == b"onetwo"
        assert head_after < 0.5 < time.monotonic() - started
        connection.close()


def test_a_client_that_expects_100_continue_gets_it_before_it_sends_the_body() -> None:
    with serving() as port, socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert client.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"{}")
        received = b""
        while not received.endswith(b"ok"):
            received += client.recv(1024)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
