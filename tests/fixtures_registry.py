"""A real image registry for tests: Debian's ``docker-registry`` on a free loopback port, started by
``scripts/start-registry.sh`` (the same script CI and people use), anonymous or with htpasswd basic auth.

Docker allows plain http to registries on 127.0.0.0/8, so the engine pushes to and pulls from it as a cloud
host pulls from Docker Hub or GHCR. A test module gets the fixtures with
``pytest_plugins = ["tests.fixtures_registry"]``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.token_service import TokenService

REPO = Path(__file__).resolve().parent.parent


@dataclass
class LocalRegistry:
    address: str  # 127.0.0.1:PORT
    state: Path
    pid: int
    username: str | None = None
    password: str | None = None

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.address}/{repository}:{tag}"

    def stop(self) -> None:
        """Stop the server and drop the local tags that point into it (pushes leave them on the engine)."""
        self.untag_local()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)

    def untag_local(self) -> None:
        try:
            import docker

            client = docker.from_env()
            for image in client.images.list():
                for tag in image.tags:
                    if tag.startswith(self.address + "/"):
                        client.images.remove(tag)
        except Exception:  # no engine: nothing was tagged through it either
            pass


def start_registry(
    state: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    token: dict[str, str] | None = None,
) -> LocalRegistry:
    """Start one registry with its own storage under ``state``; with a username, basic auth (bcrypt htpasswd);
    with ``token`` (REGISTRY_TOKEN_* values), token auth."""
    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["REGISTRY_STATE"] = str(state)
    env.update(token or {})
    if username is not None and token is None:
        if shutil.which("htpasswd") is None:  # installed with docker-registry by the script
            subprocess.run(
                ["bash", "scripts/start-registry.sh", "--install"], cwd=REPO, check=True, timeout=600
            )
        line = subprocess.run(["htpasswd", "-Bbn", username, password or ""], check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()  # fmt: skip
        (state / "htpasswd").write_text(line + "\n")
        env["REGISTRY_HTPASSWD"] = str(state / "htpasswd")
    p = subprocess.run(["bash", "scripts/start-registry.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    if p.returncode != 0:
        raise RuntimeError(f"scripts/start-registry.sh failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return LocalRegistry(address=p.stdout.strip().splitlines()[-1], state=state,
                         pid=int((state / "pid").read_text()), username=username, password=password)  # fmt: skip


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    """An anonymous registry (push and pull without credentials), its own storage, stopped at session end."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    """A registry that answers only with basic auth (``username``/``password`` random per session)."""
    reg = start_registry(tmp_path_factory.mktemp("registry-auth"), username="qa-" + uuid.uuid4().hex[:6],
                         password="pw-" + uuid.uuid4().hex)  # fmt: skip
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory) -> Iterator[tuple[LocalRegistry, TokenService]]:
    """A registry in token-auth mode (Docker Hub's and GHCR's scheme) with its token service."""
    from tests.token_service import ISSUER, SERVICE, TokenService

    state = tmp_path_factory.mktemp("registry-token")
    user, password = "qa-" + uuid.uuid4().hex[:6], "pw-" + uuid.uuid4().hex
    tokens = TokenService(state, user, password)
    token = {"REGISTRY_TOKEN_REALM": tokens.url, "REGISTRY_TOKEN_SERVICE": SERVICE,
             "REGISTRY_TOKEN_ISSUER": ISSUER, "REGISTRY_TOKEN_CERT": str(tokens.cert)}  # fmt: skip
    reg = start_registry(state, username=user, password=password, token=token)
    try:
        yield reg, tokens
    finally:
        reg.stop()
        tokens.close()
