"""A loopback endpoint through which a trainer's model graders reach the models Tunery serves.

Reinforcement fine-tuning grades in the trainer, a child process without Tunery's chat engine. When a job's
grader holds a ``score_model`` or ``label_model``, the worker opens a ``JudgeRelay`` for the run: an HTTP
server on ``127.0.0.1`` (a free port) that answers ``POST /judge`` with the same ``Judge`` evals and the grader
endpoints use (``ChatJudge`` over the chat service, for the job's project), so a judge may be a base model,
a fine-tune, a checkpoint or a deployment, batched with other traffic. Each relay has a random bearer token
written only into the run's spec; it lives as long as the trainer and is closed after it.

Hand-written on the standard library's ``ThreadingHTTPServer`` on purpose: one JSON route on loopback for the
length of one run, with nothing of the public API's routing, auth or dialects.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tunery.graders import ChatMessage, Judge, JudgeSampling

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


class JudgeRelay:
    """``POST /judge`` on loopback for one run; ``url`` and ``token`` go into the trainer's spec."""

    def __init__(self, judge: Judge) -> None:
        self._judge = judge
        self.token = secrets.token_urlsafe(32)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._closed = False
        self._thread = threading.Thread(target=self._server.serve_forever, name="tunery-judge-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/judge"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask the judge for one reply (``body``: model, messages, sampling), as JSON."""
        messages = [ChatMessage(role=str(m["role"]), content=str(m["content"])) for m in body["messages"]]
        sampling = JudgeSampling(**body.get("sampling", {}))
        reply = self._judge.complete(str(body["model"]), messages, sampling)
        usage = reply.usage
        return {
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "model": reply.model,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
            },
        }

    def authorized(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())

    def close(self) -> None:
        """Stop answering (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(relay: JudgeRelay) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/judge" or not relay.authorized(self.headers.get("Authorization")):
                self._send(404 if self.path != "/judge" else 401, {"error": "unknown route or token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._send(413, {"error": f"a judge request is 1 to {MAX_BODY_BYTES} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length))
                self._send(200, relay.answer(body))
            except Exception as exc:  # the judge's failure is the grading's error (model_grader_server_error)
                message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
                self._send(502, {"error": message})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("judge relay: " + format, *args)

    return Handler
