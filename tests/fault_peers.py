"""Dependencies that fail on demand, for the fault matrix (issue 19): an HTTP peer that stands where a Qdrant
server would be, and the scripted LLM endpoint made killable. Both are real servers on loopback ports.

Killing one closes its listening socket (the kernel then refuses connections, as for a dead process); reviving
binds the same port again, so the service under test reconnects to the address it was given.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

from tests.scripted_llm import ScriptedLlm

QDRANT_VERSION = version("qdrant-client")  # claimed by the peer, so that the client's version check passes


class _Server(ThreadingHTTPServer):
    """Keeps its open connections, so that killing it also resets those (a client's keep-alive connection to a
    dead process is reset too; closing only the listening socket would leave them answering)."""

    daemon_threads = True  # a handler stuck in a "hung" reply must not keep the process alive

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:  # type: ignore[override]
        """Quiet about clients that gave up (their timeout is the point of a fault); loud about anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _serve(server: _Server) -> _Server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _rebind(server: _Server) -> _Server:
    """A new server with the same handler on the same port (HTTPServer sets SO_REUSEADDR)."""
    return _serve(_Server(server.server_address, server.RequestHandlerClass))


def _close(server: _Server) -> None:
    """Stop listening and reset every open connection."""
    server.shutdown()
    server.server_close()
    with server._connections_lock:
        open_connections = list(server.connections)
    for connection in open_connections:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)


class QdrantFaultPeer:
    """Answers what opening a collection asks a Qdrant server (``GET /``, ``GET /collections/NAME/exists``: it
    holds none) in mode ``ok``; otherwise never answers (hung), answers after ``slow_s`` (slow), with HTTP 500
    (errors) or with a body that is not JSON (garbage). :meth:`kill` refuses connections until :meth:`revive`.

    There is no Qdrant server binary here to stand in front of: this peer replaces it, so only the store's
    open path is exercised, not search or upsert.
    """

    def __init__(self, slow_s: float = 0.5) -> None:
        self.mode = "ok"
        self.slow_s = slow_s
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                mode = owner.mode
                if mode == "hung":
                    time.sleep(3600)
                    return
                if mode == "slow":
                    time.sleep(owner.slow_s)
                if mode == "errors":
                    self._send(500, b'{"status": {"error": "Service internal error: scripted"}}')
                elif mode == "garbage":
                    self._send(200, b"<html>upstream timed out</html>")
                elif self.path.rstrip("/") == "":
                    self._send(200, json.dumps({"title": "qdrant - fault peer", "version": QDRANT_VERSION}).encode())
                else:
                    self._send(200, json.dumps({"result": {"exists": False}, "status": "ok", "time": 0}).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _serve(_Server(("127.0.0.1", 0), Handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kill(self) -> None:
        _close(self.server)

    def revive(self) -> None:
        self.server = _rebind(self.server)

    def close(self) -> None:
        self.mode = "ok"
        _close(self.server)


class KillableLlm(ScriptedLlm):
    """The scripted LLM endpoint, which can be killed (connections refused and reset) and revived on its port."""

    def __init__(self) -> None:
        super().__init__()
        handler = self.server.RequestHandlerClass
        self.server.server_close()  # not started yet: replaced by one that keeps its connections
        self.server: _Server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def kill(self) -> None:
        _close(self.server)

    def revive(self) -> None:
        self.server = _rebind(self.server)
