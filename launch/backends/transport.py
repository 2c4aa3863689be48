"""HTTP for the cloud APIs: requests + urllib3 ``Retry`` (backoff with jitter, Retry-After, 429/5xx, connect and
read retries) on a Session, and a second Session that never retries, for calls that create billable things.

Why two sessions: a create whose answer was lost (read timeout, connection reset, 5xx from a gateway) may have
created an instance; sending it again makes a second one. Such a create raises ``AmbiguousCreate`` and the
caller looks the instance up by name instead. Why a third, plain session: presigned URLs (vast logs on S3) must
never receive the API key, and S3 refuses a request carrying two auth mechanisms.

Every answer that is not JSON (an HTML error page, an empty body, a plain-text 429) becomes one ``CloudError``
naming the cloud, the call and the HTTP status.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from launch.backends.base import AmbiguousCreate, CloudError, RequestRejected

logger = logging.getLogger(__name__)
RETRY_STATUS = (429, 500, 502, 503, 504)
# answers that say "retrying will not help" although their status is in RETRY_STATUS
NO_RETRY_MARKERS = (b"search_quota_exceeded",)  # vast: the daily search quota
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds)


class _NotRetried(CloudError):
    """Raised from inside urllib3 when a retryable status carries a do-not-retry marker."""


class CloudRetry(Retry):
    """``Retry`` that gives up at once on a 429 whose body says a quota is exhausted (vast search quota)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when exhausted
        if response is not None and response.status == 429:
            body = response.data or b""  # read only once we know the response will not be handed on
            if any(m in body for m in NO_RETRY_MARKERS):
                response.release_conn()
                raise _NotRetried(body.decode("utf-8", "replace"), status=429, body=_parse(body))
        return new


def make_retry(retries: int, backoff: float, backoff_max: float = 30.0) -> Retry:
    return CloudRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=None,  # any verb: callers only put idempotent calls on this session
        status_forcelist=RETRY_STATUS,
        backoff_factor=backoff,
        backoff_max=backoff_max,
        backoff_jitter=backoff,  # several clients do not retry in lock-step
        respect_retry_after_header=True,
        retry_after_max=int(backoff_max * 4) or 1,
        raise_on_status=False,  # hand the last answer back: its body says what went wrong
    )


def _session(retry: Retry, headers: dict[str, str] | None = None) -> requests.Session:
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers.update(headers or {})
    return s


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def snippet(text: str, limit: int = 200) -> str:
    """A readable excerpt of an error page: tags dropped, whitespace collapsed."""
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


@dataclass
class Answer:
    """One JSON answer of any HTTP status (callers decide what a 4xx means for their cloud)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Transport:
    """One cloud's HTTP: ``call`` (retried), ``create`` (never retried), ``plain_get`` (no auth header)."""

    def __init__(
        self,
        cloud: str,
        headers: dict[str, str],
        *,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ):
        self.cloud = cloud
        self.timeout = timeout
        self.session = _session(make_retry(retries, backoff), headers)
        self.create_session = _session(Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0,
                                             raise_on_status=False), headers)  # fmt: skip
        self.plain = _session(make_retry(retries, backoff))  # presigned URLs: no Authorization, ever

    # -- calls ---------------------------------------------------------------------------------------------
    def call(self, call: str, method: str, url: str, *, allow_empty: bool = False, **kw: Any) -> Answer:
        """An idempotent call (reads, stop, destroy, GraphQL queries), retried on 429/5xx and network errors."""
        try:
            resp = self.session.request(method, url, timeout=kw.pop("timeout", self.timeout), **kw)
        except _NotRetried as e:
            raise CloudError(f"{self.cloud}: {call} → HTTP 429: {snippet(str(e))} (not retried)",
                             cloud=self.cloud, call=call, status=429, body=e.body) from None  # fmt: skip
        except requests.RequestException as e:
            raise CloudError(
                f"{self.cloud}: {call}: {type(e).__name__}: {e}", cloud=self.cloud, call=call
            ) from None
        return self._answer(call, resp, allow_empty=allow_empty)

    def create(self, call: str, method: str, url: str, **kw: Any) -> Answer:
        """A call that creates an instance: sent once. Lost answer, 5xx or non-JSON 2xx → ``AmbiguousCreate``."""
        try:
            resp = self.create_session.request(method, url, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.RequestException as e:
            raise AmbiguousCreate(
                f"{self.cloud}: {call}: {type(e).__name__} after the request was sent; an instance may exist",
                cloud=self.cloud, call=call,
            ) from None  # fmt: skip
        body = _parse(resp.content)
        if body is None and (resp.status_code >= 500 or resp.ok):
            raise AmbiguousCreate(
                f"{self.cloud}: {call} → HTTP {resp.status_code}: {snippet(resp.text) or 'empty body'}; "
                "an instance may exist",
                cloud=self.cloud, call=call, status=resp.status_code,
            )  # fmt: skip
        return self._answer(call, resp)

    def stream(self, call: str, url: str, *, read_timeout: float, **kw: Any) -> requests.Response:
        """A GET whose body stays open (server-sent events): the caller iterates it and closes it."""
        try:
            resp = self.session.get(url, stream=True, timeout=(self.timeout[0], read_timeout), **kw)
        except requests.RequestException as e:
            raise CloudError(
                f"{self.cloud}: {call}: {type(e).__name__}: {e}", cloud=self.cloud, call=call
            ) from None
        if not resp.ok:
            try:
                self._answer(call, resp)  # raises with the error body's words
            finally:
                resp.close()
            raise CloudError(f"{self.cloud}: {call} → HTTP {resp.status_code}", cloud=self.cloud, call=call,
                             status=resp.status_code)  # fmt: skip
        return resp

    def plain_get(self, call: str, url: str) -> requests.Response:
        """GET a presigned URL on another host: no Authorization header, no API key."""
        try:
            return self.plain.get(url, timeout=self.timeout)
        except requests.RequestException as e:
            raise CloudError(
                f"{self.cloud}: {call}: {type(e).__name__}: {e}", cloud=self.cloud, call=call
            ) from None

    # -- answers -------------------------------------------------------------------------------------------
    def _answer(self, call: str, resp: requests.Response, *, allow_empty: bool = False) -> Answer:
        body = _parse(resp.content)
        if body is None and not (allow_empty and resp.ok):
            kind = RequestRejected if resp.status_code in (401, 403) else CloudError
            what = snippet(resp.text) or "empty body"
            raise kind(
                f"{self.cloud}: {call} → HTTP {resp.status_code} "
                f"({resp.headers.get('Content-Type', 'no content type')}): {what}",
                cloud=self.cloud, call=call, status=resp.status_code,
            )  # fmt: skip
        if resp.status_code in (401, 403):
            raise RequestRejected(
                f"{self.cloud}: {call} → HTTP {resp.status_code}: the API key was refused: {error_message(body)}",
                cloud=self.cloud, call=call, status=resp.status_code, body=body,
            )  # fmt: skip
        return Answer(resp.status_code, body, dict(resp.headers))


def error_message(body: Any) -> str:
    """The useful words of an error body (vast: error/msg/detail; GraphQL: errors[].message; REST: detail)."""
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list) and body["errors"]:
            return "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in body["errors"]
            )
        parts = [str(body[k]) for k in ("error", "msg", "message", "detail", "title") if body.get(k)]
        if parts:
            return ": ".join(dict.fromkeys(parts))
    return snippet(json.dumps(body) if not isinstance(body, str) else body)
