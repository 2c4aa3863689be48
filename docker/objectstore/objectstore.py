"""SeaweedFS S3 server for compose: start it, create the buckets, report health (standard library only).

Why a script and not a bare `weed server` command: the identity (access/secret key) must come from the
environment, never from a file in the image or a command line in `docker inspect`; the buckets must exist
before the trainer starts (compose `depends_on: condition: service_healthy`); and all eight ports must be
configurable because these machines have no bridge network (host networking), where a fixed port can clash
with another SeaweedFS on the same host.

  objectstore.py serve    run the server in the foreground (the container's main process)
  objectstore.py health   exit 0 once the buckets exist and S3 answers (the compose healthcheck)

Env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (required: the one identity the server accepts),
OBJECTSTORE_BUCKETS (comma-separated, default qa-expert), OBJECTSTORE_PORT_BASE (default 18330: S3 on it,
then S3 gRPC, master, master gRPC, volume, volume gRPC, filer, filer gRPC on the next seven),
OBJECTSTORE_BIND (default 127.0.0.1), OBJECTSTORE_DIR (default /var/lib/seaweedfs),
OBJECTSTORE_VOLUME_SIZE_MB (default 1024).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

READY = Path(os.environ.get("OBJECTSTORE_READY_FILE", "/tmp/objectstore.ready"))
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")


def log(msg: str) -> None:
    print(f"[objectstore] {msg}", file=sys.stderr, flush=True)


def ports() -> dict[str, int]:
    raw = os.environ.get("OBJECTSTORE_PORT_BASE", "18330")
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535 - len(PORT_NAMES):
        raise SystemExit(
            f"error: OBJECTSTORE_PORT_BASE={raw!r}: need an integer in 1024..{65535 - len(PORT_NAMES)}"
        )
    return {name: int(raw) + i for i, name in enumerate(PORT_NAMES)}


def buckets() -> list[str]:
    names = [b.strip() for b in os.environ.get("OBJECTSTORE_BUCKETS", "qa-expert").split(",") if b.strip()]
    bad = [b for b in names if not _BUCKET_RE.match(b)]
    if bad or not names:
        raise SystemExit(f"error: OBJECTSTORE_BUCKETS: invalid bucket name(s) {bad or names}")
    return names


def write_identity(path: Path) -> None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise SystemExit(
            "error: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (e.g. in .env) for the S3 server"
        )
    identity = {"name": "qa", "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: owner-only file
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [identity]}, f)


def wait_http(url: str, deadline: float, proc: subprocess.Popen) -> None:
    """Until the URL answers with any HTTP status (S3 answers 403 to anonymous requests: that is fine)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: weed exited with {proc.returncode} during startup")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer in time")


def create_bucket(filer: str, name: str, deadline: float) -> None:
    """SeaweedFS S3 buckets are directories under /buckets on the filer; POSTing the directory creates it."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # No body and no Content-Type: the filer treats a form body as a file upload.
            req = urllib.request.Request(f"{filer}/buckets/{name}/", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
            return
        except urllib.error.HTTPError as e:
            if e.code == 409:  # kept from an earlier start (persistent volume): nothing to do
                return
            last = e
            time.sleep(0.5)
        except OSError as e:  # filer may still be joining the master
            last = e
            time.sleep(0.5)
    raise SystemExit(f"error: could not create bucket {name!r}: {last}")


def serve() -> int:
    p, names = ports(), buckets()
    bind = os.environ.get("OBJECTSTORE_BIND", "127.0.0.1")
    root = Path(os.environ.get("OBJECTSTORE_DIR", "/var/lib/seaweedfs"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    READY.unlink(missing_ok=True)
    config = Path("/tmp/objectstore-s3.json")
    write_identity(config)
    args = [
        "weed", "server", f"-dir={root / 'data'}", f"-ip={bind}", f"-ip.bind={bind}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-volume.max=0",
        f"-master.volumeSizeLimitMB={os.environ.get('OBJECTSTORE_VOLUME_SIZE_MB', '1024')}",
    ]  # fmt: skip
    log(f"starting SeaweedFS: S3 on {bind}:{p['s3']}, buckets {names}")
    proc = subprocess.Popen(args)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    signal.signal(signal.SIGINT, lambda *_: proc.terminate())
    deadline = time.monotonic() + float(os.environ.get("OBJECTSTORE_START_TIMEOUT", "120"))
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    wait_http(f"http://{host}:{p['filer']}/", deadline, proc)
    for name in names:
        create_bucket(f"http://{host}:{p['filer']}", name, deadline)
    wait_http(f"http://{host}:{p['s3']}/", deadline, proc)
    READY.write_text(json.dumps({"endpoint_url": f"http://{host}:{p['s3']}", "buckets": names}))
    log(f"ready: endpoint http://{host}:{p['s3']} buckets {names}")
    code = proc.wait()
    READY.unlink(missing_ok=True)
    return code if code > 0 else 0


def health() -> int:
    if not READY.exists():
        print("not ready: buckets not created yet", file=sys.stderr)
        return 1
    info = json.loads(READY.read_text())
    host, port = info["endpoint_url"].rsplit("/", 1)[-1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        print(f"not ready: S3 port {port}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "serve"
    if cmd == "serve":
        return serve()
    if cmd == "health":
        return health()
    print(f"usage: objectstore.py serve|health (got {cmd!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
