"""Inputs on a bare rented host: data files and model folders fetched from s3://, https:// or hf:// into a cache.

A cloud instance has no ``/data`` mount: a job spec names its inputs by URI and ``qa_train run`` fetches them
once, before any stage starts, so every stage sees local paths. Each download goes to a temporary name in the
cache and is renamed into place only after its size was checked (a second call, or a relaunch on the same
disk, reuses it). Failures are one :class:`InputError` that names the URI: exit 3 for storage/network trouble
(403, 404, timeout, connection refused, short read), exit 2 for a URI that is malformed in itself.

The hub token (``HF_TOKEN``) is sent only to the hub host (``HF_ENDPOINT`` or huggingface.co); redirects are
followed by hand so it never reaches the CDN or any other host. Imports requests/boto3 lazily; every S3 call
goes through the storage adapter (``qa_train.storage``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urljoin, urlparse

from qa_train.contract import ExitCode, hub_endpoint, hub_file_url, input_kind
from qa_train.fsutil import atomic_path
from qa_train.storage.uris import split_s3_uri

logger = logging.getLogger("qa_train.inputs")
ENV_CACHE = "QA_INPUT_CACHE"  # overrides ~/.cache/qa_train/inputs
ENV_TIMEOUT = "QA_INPUT_TIMEOUT"  # seconds without a byte before a download is given up (default 60)
Expect = Literal["file", "folder", "any"]


class InputError(RuntimeError):
    """An input that cannot be fetched; ``exit_code`` 3 (storage/network) or 2 (malformed URI)."""

    def __init__(self, message: str, exit_code: int = ExitCode.STORAGE):
        super().__init__(message)
        self.exit_code = exit_code


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "qa_train" / "inputs")


def is_remote(path: str | None) -> bool:
    try:
        return bool(path) and input_kind(str(path)) != "local"
    except ValueError:
        return True  # a bad scheme: fetch_input names it


def fetch_input(
    uri_or_path: str,
    cache_dir: str | Path | None = None,
    *,
    what: str,
    expect: Expect = "file",
    progress: bool = True,
    timeout: float | None = None,
) -> str:
    """The local path of an input: a path is returned unchanged, a URI is downloaded once into the cache.

    ``what`` names the input in messages (``data.train_path``). ``expect="folder"`` (model folders) and
    ``"any"`` (data: a file or a ``datasets.save_to_disk`` folder) allow an ``s3://`` prefix holding many keys.
    """
    try:
        kind = input_kind(uri_or_path)
    except ValueError as e:
        raise InputError(f"{what}: {e}", ExitCode.USAGE) from None
    if kind == "local":
        return uri_or_path
    target = Path(local_path_for(uri_or_path, cache_dir))
    timeout = timeout if timeout is not None else float(os.environ.get(ENV_TIMEOUT) or 60)
    if kind == "s3":
        return _fetch_s3(uri_or_path, target, what=what, expect=expect, progress=progress)
    if expect == "folder":
        raise InputError(
            f"{what}: {uri_or_path}: a folder cannot be fetched over HTTP; upload it to s3:// "
            "(python launch/submit.py upload-data DIR s3://…) or use a hub model id",
            ExitCode.USAGE,
        )
    url = _http_url(uri_or_path, what)
    if target.is_file():
        logger.info("%s: using the cached copy of %s (%s)", what, uri_or_path, target)
        return str(target)
    _download_http(url, target, uri=uri_or_path, what=what, progress=progress, timeout=timeout)
    return str(target)


def _http_url(uri: str, what: str) -> str:
    try:
        url = hub_file_url(uri) if uri.startswith("hf://") else uri
    except ValueError as e:
        raise InputError(f"{what}: {e}", ExitCode.USAGE) from None
    if not urlparse(url).netloc:
        raise InputError(f"{what}: {uri!r} has no host", ExitCode.USAGE)
    return url


def local_path_for(uri_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Where ``fetch_input`` puts a URI (pure: nothing is fetched), so stage commands can be built up front.

    ``<cache>/<sha256 of the URI>/<basename>``; a local path (or a URI that cannot be parsed) is returned as is.
    """
    try:
        kind = input_kind(uri_or_path)
        if kind == "local":
            return uri_or_path
        if kind == "s3":
            path = split_s3_uri(uri_or_path)[1]
        else:
            path = urlparse(hub_file_url(uri_or_path) if kind == "hf" else uri_or_path).path
    except ValueError:
        return uri_or_path
    name = _safe_name(unquote(path.rstrip("/").rsplit("/", 1)[-1]))
    digest = hashlib.sha256(uri_or_path.encode()).hexdigest()[:24]
    return str(Path(cache_dir or cache_root()) / digest / name)


def _safe_name(name: str) -> str:
    name = name.replace("\\", "_").strip()
    return name if name and name not in (".", "..") else "download"


# -------------------------------------------------------------------------------------------------- HTTP


def _token_for(url: str) -> str | None:
    """``HF_TOKEN`` when ``url`` is on the hub host itself; None for every other host (CDN, S3, anyone)."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        return None
    return token if urlparse(url).netloc == urlparse(hub_endpoint()).netloc else None


def _session() -> Any:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=2,
        connect=2,
        read=1,
        status=2,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        redirect=0,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    return s


def _download_http(url: str, target: Path, *, uri: str, what: str, progress: bool, timeout: float) -> None:
    import requests

    session = _session()
    hint = " (set HF_TOKEN for a gated or private data set)" if uri.startswith("hf://") else ""
    try:
        for _ in range(10):  # redirects by hand: the token goes only where _token_for says
            headers = {"Accept-Encoding": "identity"}  # Content-Length must count the bytes we write
            token = _token_for(url)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            resp = session.get(
                url, headers=headers, stream=True, timeout=(10, timeout), allow_redirects=False
            )
            if resp.is_redirect and resp.headers.get("Location"):
                url = urljoin(url, resp.headers["Location"])
                resp.close()
                continue
            break
        else:
            raise InputError(f"{what}: {uri}: too many redirects")
        with resp:
            if resp.status_code in (401, 403):
                raise InputError(f"{what}: {uri}: access refused (HTTP {resp.status_code}){hint}")
            if resp.status_code == 404:
                raise InputError(f"{what}: {uri}: not found (HTTP 404)")
            if resp.status_code >= 300:
                raise InputError(f"{what}: {uri}: download failed (HTTP {resp.status_code} {resp.reason})")
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            _write_atomically(
                target,
                lambda write: _copy_stream(resp, write),
                expected,
                uri=uri,
                what=what,
                progress=progress,
            )
    except requests.exceptions.Timeout:
        raise InputError(f"{what}: {uri}: timed out (no data for {timeout:g}s)") from None
    except requests.exceptions.ConnectionError as e:
        if "timed out" in str(e).lower():
            raise InputError(f"{what}: {uri}: timed out (no data for {timeout:g}s)") from None
        raise InputError(f"{what}: {uri}: cannot connect ({_short(e)})") from None
    except requests.exceptions.RequestException as e:
        raise InputError(f"{what}: {uri}: download failed ({_short(e)})") from None


def _copy_stream(resp: Any, write: Callable[[bytes], None]) -> None:
    import requests

    try:
        for chunk in resp.iter_content(1 << 20):
            write(chunk)
    except requests.exceptions.ChunkedEncodingError as e:  # connection closed before Content-Length bytes
        raise _ShortRead(str(e)) from None


class _ShortRead(Exception):
    pass


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"


def _bar(total: int | None, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # in a container log (no TTY) a redraw is a new line: redraw rarely
    return tqdm(
        total=total, unit="B", unit_scale=True, desc=desc, mininterval=0.2 if sys.stderr.isatty() else 10
    )


def _write_atomically(
    target: Path,
    produce: Callable[[Callable[[bytes], None]], None],
    expected: int | None,
    *,
    uri: str,
    what: str,
    progress: bool,
) -> None:
    """Write to a temp file beside ``target``, check the size, rename: the cache never holds a partial file."""
    written = 0
    bar = _bar(expected, f"fetch {target.name}", progress)
    try:
        with (
            atomic_path(target) as tmp,
            open(tmp, "wb") as fh,
        ):  # renamed into place only when all checks pass

            def write(chunk: bytes) -> None:
                nonlocal written
                fh.write(chunk)
                written += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))

            try:
                produce(write)
            except _ShortRead:
                raise InputError(
                    f"{what}: {uri}: size mismatch: connection closed after {written} of {expected} bytes"
                ) from None
            fh.flush()
            if expected is not None and written != expected:
                raise InputError(f"{what}: {uri}: size mismatch: got {written} bytes, expected {expected}")
        logger.info("%s: fetched %s (%d bytes) to %s", what, uri, written, target)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------------- S3


def _s3_error(exc: BaseException, uri: str, what: str) -> InputError:
    """The storage adapter's reading of the error (``classify``), in this module's short words."""
    from qa_train.storage import Problem, classify, error_code, resolve_endpoint, scrub

    problem = classify(exc)
    if problem is Problem.NO_CREDENTIALS:
        return InputError(f"{what}: {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    if problem is Problem.NO_BUCKET:
        return InputError(f"{what}: {uri}: the bucket does not exist")
    if problem is Problem.NOT_FOUND:
        return InputError(f"{what}: {uri}: not found")
    if problem in (Problem.DENIED, Problem.BAD_CREDENTIALS):
        return InputError(f"{what}: {uri}: access refused ({error_code(exc)})")
    message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
    if problem is Problem.OTHER and getattr(exc, "response", None):
        return InputError(f"{what}: {uri}: S3 error {error_code(exc)} {message}".rstrip())
    endpoint = resolve_endpoint(None) or "AWS default"
    return InputError(scrub(f"{what}: {uri}: cannot reach S3 (endpoint {endpoint}): {_short(exc)}"))


def _fetch_s3(uri: str, target: Path, *, what: str, expect: Expect, progress: bool) -> str:
    """One object (streamed, size-checked) or every object under a prefix (one s3transfer batch); an outage
    is retried for ``QA_S3_RETRY_S`` seconds like an upload."""
    from qa_train.storage import RetryPolicy, S3UriError, make_client, retrying

    try:
        bucket, key = split_s3_uri(uri)
    except S3UriError as e:
        raise InputError(f"{what}: {e}", ExitCode.USAGE) from None
    if (target.is_file() and expect != "folder") or (target.is_dir() and expect != "file"):
        logger.info("%s: using the cached copy of %s (%s)", what, uri, target)
        return str(target)
    try:
        policy = RetryPolicy.uploads()
    except ValueError as e:
        raise InputError(f"{what}: {e}", ExitCode.USAGE) from None
    client = make_client(None, policy=policy.with_attempts(3))
    try:
        retrying(lambda: _fetch_s3_once(client, bucket, key, target, uri=uri, what=what, expect=expect,
                                        progress=progress), policy, f"fetch {uri}")  # fmt: skip
    except InputError:
        raise
    except Exception as e:  # botocore's errors and the adapter's: one line naming the URI
        raise _s3_error(e, uri, what) from None
    return str(target)


def _fetch_s3_once(
    client: Any, bucket: str, key: str, target: Path, *, uri: str, what: str, expect: Expect, progress: bool
) -> None:
    from qa_train.storage import head, list_keys, stream_to

    size: int | None = None
    if not key.endswith("/") and expect != "folder":
        meta = head(client, bucket, key)
        size = None if meta is None else int(meta["ContentLength"])
    if size is not None:
        _write_atomically(target, lambda write: stream_to(client, bucket, key, write), size, uri=uri, what=what,
                          progress=progress)  # fmt: skip
        return
    prefix = key.rstrip("/") + "/"
    keys = list_keys(client, bucket, prefix)
    if not keys:
        raise InputError(f"{what}: {uri}: not found")
    if expect == "file":
        raise InputError(f"{what}: {uri} is a folder ({len(keys)} objects); this input must be one file")
    _download_s3_folder(client, bucket, prefix, keys, target, uri=uri, what=what, progress=progress)


def _download_s3_folder(
    client: Any,
    bucket: str,
    prefix: str,
    keys: dict[str, int],
    target: Path,
    *,
    uri: str,
    what: str,
    progress: bool,
) -> None:
    """Every key under ``prefix`` into a temp folder (one s3transfer batch), each size-checked, then one rename
    into place: the cache never holds half a folder."""
    from qa_train.storage import Transfers, safe_relpaths

    try:
        items = safe_relpaths(prefix, keys)
    except ValueError as e:
        raise InputError(f"{what}: {uri}: {e}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        total = sum(keys[k] for k, _ in items)
        with Transfers(client, total_bytes=total, desc=f"fetch {target.name}/", progress=progress) as batch:
            for key, rel in items:
                batch.download(rel, bucket, key, tmp / rel, keys[key])
            result = batch.finish()
        if result.failed:
            assert result.error is not None
            raise result.error
        for key, rel in items:
            got = (tmp / rel).stat().st_size
            if got != keys[key]:
                raise InputError(
                    f"{what}: {uri}: size mismatch for {rel}: got {got} bytes, expected {keys[key]}"
                )
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a concurrent fetch put it there first: keep theirs
                raise
        logger.info("%s: fetched %s (%d objects) to %s", what, uri, len(items), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
