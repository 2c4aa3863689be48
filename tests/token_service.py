"""A Docker registry token service (the distribution token-auth spec) for a real ``docker-registry`` in token mode.

Docker Hub and GHCR answer an unauthenticated request with ``401`` and ``WWW-Authenticate: Bearer realm=…,
service=…,scope=…``; the client fetches a JWT from the realm (with basic auth, or anonymously) and retries with
it. The registry here is the real server and verifies every token's RS256 signature against a certificate; this
module is only the issuer, the part of Docker Hub (auth.docker.io) no test can reach. As there, an anonymous
caller gets a token too, with pull access to ``public/…`` repositories only; a wrong password gets 401.

Keys and signatures come from the ``openssl`` CLI (no crypto package in the test venv).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.loopback import LoopbackServer

SERVICE = "qa-expert-test-registry"
ISSUER = "qa-expert-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_der: bytes) -> str:
    """The ``kid`` the registry looks the signing key up by: base32 of the first 240 bits of SHA-256 of the
    PKIX public key, in colon-separated groups of four (docker/libtrust ``keyIDFromCryptoKey``)."""
    s = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


class TokenService:
    """``url`` is the realm; ``cert`` the PEM certificate the registry trusts; ``requests`` what was asked."""

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        self.key, self.cert = workdir / "token.key", workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=" + ISSUER],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        der = subprocess.run(["openssl", "pkey", "-in", str(self.key), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True, timeout=60).stdout  # fmt: skip
        self.kid = libtrust_key_id(der)
        self.username, self.password = username, password
        self.requests: list[dict[str, str | None]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                q = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
                user = service.check(self.headers.get("Authorization"))
                service.requests.append(
                    {"user": user or None, "scope": q.get("scope"), "service": q.get("service")}
                )
                if user is None:
                    body, status = {"details": "incorrect username or password"}, 401
                else:
                    token = service.issue(user, q.get("service", ""), q.get("scope", ""))
                    body, status = {"token": token, "access_token": token, "expires_in": 300}, 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = LoopbackServer(Handler)
        self.url = self.server.url + "/token"

    def check(self, header: str | None) -> str | None:
        """'' for an anonymous caller, the user name for good credentials, None for bad ones."""
        if not header:
            return ""
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, password) == (self.username, self.password) else None

    def issue(self, user: str, audience: str, scope: str) -> str:
        access = []
        for item in scope.split():  # repository:NAME:pull,push
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": audience, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             check=True, capture_output=True, timeout=60).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(sig)}"

    def close(self) -> None:
        self.server.close()
