"""Shared machinery of the API doubles: a threaded HTTP server on loopback, request recording, scripted faults.

A fault is "the next N requests matching METHOD and a path regex get this response" — enough to produce a
plain-text 429, an HTML 502 page or a GraphQL error, in any order, from a test.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON or None
    raw: str

    @property
    def json(self) -> Any:
        return self.body


@dataclass
class Fault:
    method: str
    path_re: str
    status: int
    body: str
    content_type: str = "text/plain"
    times: int = 1
    match_body: str | None = None  # substring the raw request body must contain (e.g. a GraphQL field name)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; str → text
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ApiDouble:
    """Subclasses implement ``handle(method, path, query, body, headers) -> Reply``."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> ApiDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _serve(self) -> None:
                double._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ApiDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting ---------------------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        path_re: str,
        status: int,
        body: str | dict = "",
        *,
        content_type: str | None = None,
        times: int = 1,
        match_body: str | None = None,
    ) -> None:
        """The next ``times`` matching requests get this response instead of the normal one."""
        if isinstance(body, dict):
            text, ctype = json.dumps(body), content_type or "application/json"
        else:
            text, ctype = body, content_type or "text/plain"
        with self.lock:
            self.faults.append(Fault(method.upper(), path_re, status, text, ctype, times, match_body))

    def calls(self, method: str | None = None, path_re: str = "") -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and re.search(path_re, r.path)
            ]

    # -- plumbing ----------------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode("utf-8") if length else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded(h.command, parts.path, parse_qs(parts.query), dict(h.headers.items()), body, raw)
        with self.lock:
            self.requests.append(rec)
            fault = self._take_fault(h.command, parts.path, raw)
        if fault is not None:
            reply = Reply(fault.status, fault.body, fault.content_type)
        else:
            try:
                reply = self.handle(h.command, parts.path, rec.query, body, rec.headers)
            except Exception as e:  # a bug in the double must show up as a 500, not a hang
                reply = Reply(500, f"double crashed: {type(e).__name__}: {e}", "text/plain")
        self._write(h, reply)

    def _take_fault(self, method: str, path: str, raw: str) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.method == method and re.search(f.path_re, path):
                if f.match_body is not None and f.match_body not in raw:
                    continue
                f.times -= 1
                if f.times == 0:
                    self.faults.remove(f)
                return f
        return None

    @staticmethod
    def _write(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        if isinstance(reply.body, (dict, list)) or (reply.body is None and reply.content_type is None):
            data = json.dumps(reply.body).encode()
            ctype = reply.content_type or "application/json"
        else:
            data = str(reply.body or "").encode()
            ctype = reply.content_type or "text/plain"
        h.send_response(reply.status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def authorized(self, headers: dict[str, str]) -> bool:
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        return auth == f"Bearer {self.api_key}"

    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        raise NotImplementedError
