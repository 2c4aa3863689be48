"""Folder transfers through s3transfer (parallel, multipart): every many-file upload or download goes here.

Why one place: a hand-written serial loop beside the s3transfer one had its own size checks, progress bar and
error handling; here each transfer is a list of (local file, key) pairs and one ``TransferManager``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import DEFAULT_CHUNK_BYTES, DEFAULT_CONCURRENCY, transfer_config


class Progress:
    """Thread-safe byte counter feeding one tqdm bar (s3transfer calls back from its worker threads)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        import sys

        self._lock = threading.Lock()
        self.bar: Any = None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # a launcher-only install may lack tqdm: no bar then
            return
        # in a container log (no TTY) a redraw is a new line: redraw rarely
        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not enabled, mininterval=0.2 if sys.stderr.isatty() else 10)  # fmt: skip

    def update(self, n: int) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _subscriber(progress: Progress, size: int | None = None) -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class Sub(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            if size is not None:
                future.meta.provide_transfer_size(size)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            progress.update(bytes_transferred)

    return Sub()


@dataclass
class TransferResult:
    """Which items failed (by their name) and the first error; empty ``failed`` = all done."""

    failed: list[str] = field(default_factory=list)
    error: BaseException | None = None


class Transfers:
    """One ``TransferManager`` for a batch of uploads or downloads; ``finish`` waits for all of them.

    Use as a context manager: leaving it shuts the manager down (cancelling what is left after a failure)."""

    def __init__(
        self,
        client: Any,
        *,
        total_bytes: int,
        desc: str,
        progress: bool = True,
        concurrency: int = DEFAULT_CONCURRENCY,
        chunk_bytes: int | None = None,
        max_mbps: float = 0,
    ) -> None:
        from s3transfer.manager import TransferManager

        chunk = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.manager = TransferManager(client, transfer_config(concurrency, chunk, max_mbps))
        self.bar = Progress(total_bytes, desc, progress)
        self._futures: list[tuple[str, Any]] = []
        self._ok = False

    def upload(
        self, name: str, path: Path, bucket: str, key: str, extra_args: dict[str, Any] | None = None
    ) -> None:
        fut = self.manager.upload(
            str(path), bucket, key, extra_args=extra_args, subscribers=[_subscriber(self.bar)]
        )
        self._futures.append((name, fut))

    def download(self, name: str, bucket: str, key: str, dest: Path, size: int | None = None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fut = self.manager.download(bucket, key, str(dest), subscribers=[_subscriber(self.bar, size)])
        self._futures.append((name, fut))

    def finish(self) -> TransferResult:
        """Wait for every queued transfer; the names of those that failed and the first error."""
        result = TransferResult()
        for name, fut in self._futures:
            try:
                fut.result()
            except Exception as exc:
                result.failed.append(name)
                result.error = result.error or exc
        self._ok = not result.failed
        return result

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.manager.shutdown(cancel=not self._ok)
        self.bar.close()


def safe_relpaths(prefix: str, keys: Iterable[str]) -> list[tuple[str, str]]:
    """(key, relative path) for every object under ``prefix`` except folder markers; ``ValueError`` for a name
    that would leave the destination folder (``..``, empty parts)."""
    out = []
    for key in sorted(keys):
        rel = key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # a "folder marker" object some tools create
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise ValueError(f"refusing the object name {rel!r}")
        out.append((key, rel))
    return out
