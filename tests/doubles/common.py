"""Shared machinery of the API doubles: a threaded HTTP server on loopback, request recording, scripted faults,
and the ``Host`` an instance's container runs on.

A fault is "the next N requests matching METHOD and a path regex get this response" — enough to produce a
plain-text 429, an HTML 502 page or a GraphQL error, in any order, from a test.

``Host`` is the seam between a cloud double and whatever runs the instances: ``SimulatedHost`` (scripted, the
default) or a host that runs real containers (``tests/doubles/docker_host.py``). A double calls ``start`` when
its cloud would start the container, with only the env of the create request plus what that cloud injects.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

HostState = Literal["running", "exited", "missing"]


class HostError(RuntimeError):
    """The image could not be pulled or the container not started (the cloud shows a provisioning error)."""


class Host(Protocol):
    """Runs the containers of a cloud double's instances (ids are the double's instance ids, as strings)."""

    def start(
        self, instance_id: str, image: str, env: dict[str, str], registry_auth: tuple[str, str, str] | None
    ) -> None:
        """Pull ``image`` (``registry_auth`` = (registry, username, password)) and start it with exactly ``env``.
        Raises ``HostError`` when the image cannot be pulled or the container cannot start."""

    def state(self, instance_id: str) -> HostState: ...

    def exit_code(self, instance_id: str) -> int | None: ...

    def restart(self, instance_id: str) -> None:
        """Start an exited container again (RunPod does this; its logs continue)."""

    def stop(self, instance_id: str) -> None:
        """Stop gracefully (the cloud's stop call)."""

    def kill(self, instance_id: str) -> None:
        """Kill at once (a preemption / outbid)."""

    def remove(self, instance_id: str) -> None: ...

    def logs(self, instance_id: str) -> str:
        """The container's whole output so far (stdout and stderr)."""


@dataclass
class SimContainer:
    image: str
    env: dict[str, str]
    registry_auth: tuple[str, str, str] | None
    state: HostState = "running"
    exit_code: int | None = None
    output: list[str] = field(default_factory=list)
    starts: int = 1


class SimulatedHost:
    """A scripted host: containers "run" until a test says they exit. ``bad_images`` fail to start."""

    def __init__(self) -> None:
        self.containers: dict[str, SimContainer] = {}
        self.bad_images: dict[str, str] = {}  # image -> the daemon's error
        self.lock = threading.RLock()

    # -- Host ------------------------------------------------------------------------------------------------
    def start(
        self, instance_id: str, image: str, env: dict[str, str], registry_auth: tuple[str, str, str] | None
    ) -> None:
        with self.lock:
            if image in self.bad_images:
                raise HostError(self.bad_images[image])
            self.containers[instance_id] = SimContainer(image, dict(env), registry_auth)

    def state(self, instance_id: str) -> HostState:
        with self.lock:
            c = self.containers.get(instance_id)
            return c.state if c else "missing"

    def exit_code(self, instance_id: str) -> int | None:
        with self.lock:
            c = self.containers.get(instance_id)
            return c.exit_code if c else None

    def restart(self, instance_id: str) -> None:
        with self.lock:
            c = self.containers[instance_id]
            c.state, c.exit_code, c.starts = "running", None, c.starts + 1

    def stop(self, instance_id: str) -> None:
        self._end(instance_id, 0)

    def kill(self, instance_id: str) -> None:
        self._end(instance_id, 137)

    def remove(self, instance_id: str) -> None:
        with self.lock:
            self.containers.pop(instance_id, None)

    def logs(self, instance_id: str) -> str:
        with self.lock:
            c = self.containers.get(instance_id)
            return "".join(line + "\n" for line in c.output) if c else ""

    # -- scripting -------------------------------------------------------------------------------------------
    def _end(self, instance_id: str, code: int) -> None:
        with self.lock:
            c = self.containers.get(instance_id)
            if c and c.state == "running":
                c.state, c.exit_code = "exited", code

    def exit(self, instance_id: str, code: int = 0) -> None:
        """The container's main process ends with ``code``."""
        self._end(instance_id, code)

    def print(self, instance_id: str, *lines: str) -> None:
        """The container writes these lines."""
        with self.lock:
            self.containers[instance_id].output.extend(lines)

    def env(self, instance_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self.containers[instance_id].env)


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
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After
    after: bool = False  # serve the request normally first (a create that happened), then answer this instead
    drop: bool = False  # close the connection without any answer (a reset / lost answer)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; str → text
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None  # a body written piece by piece on a connection then closed (SSE)


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
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
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
        headers: dict[str, str] | None = None,
        after: bool = False,
        drop: bool = False,
    ) -> None:
        """The next ``times`` matching requests get this response instead of the normal one (``after``: the
        request takes effect first, as when a gateway loses the answer of a create; ``drop``: no answer at all)."""
        if isinstance(body, dict):
            text, ctype = json.dumps(body), content_type or "application/json"
        else:
            text, ctype = body, content_type or "text/plain"
        with self.lock:
            self.faults.append(Fault(method.upper(), path_re, status, text, ctype, times, match_body,
                                     dict(headers or {}), after, drop))  # fmt: skip

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
        if fault is None or fault.after:
            try:
                reply = self.handle(h.command, parts.path, rec.query, body, rec.headers)
            except Exception as e:  # a bug in the double must show up as a 500, not a hang
                reply = Reply(500, f"double crashed: {type(e).__name__}: {e}", "text/plain")
        if fault is not None:
            if fault.drop:
                h.close_connection = True
                return
            reply = Reply(fault.status, fault.body, fault.content_type, fault.headers)
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
        if reply.stream is not None:
            h.close_connection = True
            try:
                h.send_response(reply.status)
                h.send_header("Content-Type", reply.content_type or "text/event-stream")
                h.send_header("Cache-Control", "no-cache")
                h.send_header("Connection", "close")
                for k, v in reply.headers.items():
                    h.send_header(k, v)
                h.end_headers()
                for piece in reply.stream:
                    h.wfile.write(piece)
                    h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up: that is how a stream normally ends
            return
        if isinstance(reply.body, (dict, list)) or (reply.body is None and reply.content_type is None):
            data = json.dumps(reply.body).encode()
            ctype = reply.content_type or "application/json"
        else:
            data = str(reply.body or "").encode()
            ctype = reply.content_type or "text/plain"
        try:
            h.send_response(reply.status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client hung up mid-answer (its timeout): not an error

    def authorized(self, headers: dict[str, str]) -> bool:
        return bearer(headers) == self.api_key

    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        raise NotImplementedError


def bearer(headers: dict[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (None without one)."""
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
    if not auth or not auth.startswith("Bearer "):
        return None
    return auth[len("Bearer ") :]
