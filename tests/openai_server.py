"""Small real servers on loopback for tests: one speaking the OpenAI chat-completions protocol, one raw socket.

`openai_server()` answers `POST /v1/chat/completions` with "reply N to: <last user message>", records every
request (body, headers, method and path), and can be told to fail the next requests with given HTTP status codes,
to send a body that is not JSON, or to answer the next requests with a misbehaviour from `then` (a redirect, a
drip, a cut-off chunked body, a hang-up, a reset). `raw_socket_server(reply)` writes bytes that are not HTTP at all.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[[BaseHTTPRequestHandler], None]
"""Answers one request instead of the normal reply (the request has been read and recorded)."""

ANSWER = b'{"choices": [{"message": {"role": "assistant", "content": "slow"}}]}'
"""A complete, valid chat answer (what the drips send, a byte at a time)."""


@dataclass
class ServerState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    """`METHOD path` of every request, whatever its method or path."""
    fail_with: list[int] = field(default_factory=list)
    """Status codes for the next requests, used up one per request."""
    then: list[Behaviour] = field(default_factory=list)
    """Misbehaviours for the next requests (after `fail_with`), used up one per request."""
    garbage: bool = False
    url: str = ""


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # only a followed redirect would come here
            self._record()
            self._send(405, {"error": {"message": "POST only"}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._record()
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            request = json.loads(body)
            state.requests.append(request)
            if state.fail_with:
                self._send(state.fail_with.pop(0), {"error": {"message": "overloaded"}})
                return
            if state.then:
                self.close_connection = True
                state.then.pop(0)(self)
                return
            if state.garbage:
                self._send_raw(200, b"<html>not json</html>")
                return
            last_user = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
            content = f"reply {len(state.requests)} to: {last_user}"
            self._send(
                200,
                {
                    "id": f"chatcmpl-{len(state.requests)}",
                    "object": "chat.completion",
                    "model": request["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

        def _record(self) -> None:
            state.seen.append(f"{self.command} {self.path}")
            state.headers.append(dict(self.headers))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            self._send_raw(status, json.dumps(payload).encode())

        def _send_raw(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def openai_server() -> Iterator[ServerState]:
    state = ServerState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# -- misbehaviours for `ServerState.then` ---------------------------------------------------------------------------


def redirect(location: str, status: int = 302) -> Behaviour:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@dataclass
class Drip:
    """Writes an answer one byte every `interval` seconds: the head (status line and headers) or the body."""

    interval: float
    where: str = "body"
    sent: int = 0
    """Bytes written before the client went away (or all of them)."""

    def payload(self) -> tuple[bytes, bytes]:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(ANSWER)}\r\n\r\n"
        return head.encode(), ANSWER

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        head, body = self.payload()
        slow, fast = (body, b"") if self.where == "body" else (head, body)
        if self.where == "body":
            handler.wfile.write(head)
            handler.wfile.flush()
        try:
            for index in range(len(slow)):
                handler.wfile.write(slow[index : index + 1])
                handler.wfile.flush()
                self.sent += 1
                time.sleep(self.interval)
            handler.wfile.write(fast)
        except OSError:  # the client hung up: what the deadline is for
            pass

    @property
    def total(self) -> int:
        head, body = self.payload()
        return len(body) if self.where == "body" else len(head)


def chunked(*pieces: bytes) -> Behaviour:
    """A chunked answer written exactly as given (cut it short, or garble a chunk size)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            handler.wfile.write(piece)
        handler.wfile.flush()

    return answer


def oversized(size: int) -> Behaviour:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b" " * 2**20
        try:
            for _ in range(size // len(block)):
                handler.wfile.write(block)
        except OSError:  # the client stopped reading
            pass

    return answer


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection without a word (the client sees no status line)."""


def reset(handler: BaseHTTPRequestHandler) -> None:
    """Abort the connection with a TCP reset (SO_LINGER 0)."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- other servers --------------------------------------------------------------------------------------------------


@contextmanager
def raw_socket_server(reply: bytes) -> Iterator[str]:
    """A TCP server that reads what comes, answers `reply` (not HTTP) and closes; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                    connection.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]
