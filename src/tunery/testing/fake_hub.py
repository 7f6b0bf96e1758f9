"""A stand-in for the Hugging Face Hub in tests: the few endpoints ``HfApi.create_repo`` / ``upload_folder`` call.

These machines have no network, so the Hub push (``services.portability``) is tested against this local HTTP
server, started by the test on a free loopback port. It accepts one token (``TOKEN``), answers every file as a
regular (inline) upload, and keeps what was committed in ``commits`` (repo id and file bytes by path).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

TOKEN = "hf_test_token"


class FakeHub(BaseHTTPRequestHandler):
    commits: ClassVar[list[dict[str, Any]]] = []
    cards: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization", "")
        if auth != f"Bearer {TOKEN}":
            return self._reply(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/validate-yaml":  # the model card's metadata
            FakeHub.cards.append(json.loads(body)["content"])
            return self._reply(200, {"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._reply(200, {"url": f"{self.root()}/{request.get('organization')}/{request['name']}"})
        parts = self.path.split("?")[0].split("/")  # /api/models/<owner>/<name>/<preupload|commit>/<revision>
        if len(parts) == 7 and parts[5] == "preupload":
            files = json.loads(body)["files"]
            listed = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._reply(200, {"files": listed})
        if len(parts) == 7 and parts[5] == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                     for item in lines if item["key"] == "file"}  # fmt: skip
            FakeHub.commits.append({"repo": f"{parts[3]}/{parts[4]}", "files": files})
            return self._reply(200, {"commitUrl": f"{self.root()}/{parts[3]}/{parts[4]}/commit/{'a' * 40}",
                                     "commitOid": "a" * 40})  # fmt: skip
        return self._reply(404, {"error": f"not faked: {self.path}"})

    def root(self) -> str:
        return f"http://{self.headers['host']}"

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def fake_hub_server() -> Iterator[str]:
    """Serve ``FakeHub`` on a free loopback port; yields its base URL (the ``hf_endpoint`` to configure)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
