"""A scripted OpenAI-compatible endpoint: the wire protocol of /v1/chat/completions, with replies on demand.

For what a real model cannot be made to do when a test needs it: 429/500, slow replies, malformed or
out-of-options JSON, a stream cut mid-way. Each request takes the next scripted step (then the default); every
request body is recorded, so tests can check the exact prompt and response_format that went out, and so is the
most requests it was answering at once (``max_in_flight``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Step:
    """One reply. kind: content | status | raw | stream | hang."""

    kind: str = "content"
    content: str = '{"answer": ["yes"]}'
    status: int = 200
    delay_s: float = 0.0
    deltas: list[str] = field(default_factory=list)
    cut_after: int | None = None  # stream: drop the connection after this many deltas


class ScriptedLlm:
    def __init__(self) -> None:
        self.steps: deque[Step] = deque()
        self.default = Step()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most answered at once since the last script()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            _answered = True  # a GET is never counted in flight

            def do_GET(self) -> None:  # /v1/models, /health
                self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with owner._lock:
                    owner.requests.append(body)
                    step = owner.steps.popleft() if owner.steps else owner.default
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                self._answered = False
                try:
                    self._reply(step, body)
                finally:
                    self._answering_done()

            def _answering_done(self) -> None:
                """No longer in flight: called before the reply's last bytes go out, so a client that sends its
                next request as soon as it has this reply never sees two counted at once."""
                if not self._answered:
                    self._answered = True
                    with owner._lock:
                        owner.in_flight -= 1

            def _reply(self, step: Step, body: dict) -> None:
                if step.delay_s:
                    time.sleep(step.delay_s)
                if step.kind == "status":
                    self._json(step.status, {"error": {"message": f"scripted {step.status}", "type": "scripted"}})
                elif step.kind == "raw":
                    self._send(200, step.content.encode(), "application/json")
                elif step.kind == "stream" or body.get("stream"):
                    self._stream(step)
                else:
                    self._json(200, completion(step.content))

            def _stream(self, step: Step) -> None:
                deltas = step.deltas or [step.content]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, delta in enumerate(deltas):
                    if step.cut_after is not None and i >= step.cut_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no final chunk, no [DONE]
                        self.close_connection = True
                        return
                    self._chunk(f"data: {json.dumps(chunk(delta))}\n\n".encode())
                self._answering_done()
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _json(self, status: int, obj: dict) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self._answering_done()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, *steps: Step) -> None:
        """The next replies, on a quiet endpoint: requests still being answered (one a client gave up on) are let
        finish first (up to 10 s), so they are not counted in ``max_in_flight``."""
        deadline = time.monotonic() + 10.0
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.steps.clear()
            self.steps.extend(steps)
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def __enter__(self) -> ScriptedLlm:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
    }


def chunk(delta: str) -> dict:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()), "model": "scripted",
        "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}],
    }
