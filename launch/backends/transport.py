"""A small JSON-over-HTTP client for the cloud APIs: retries 429/5xx with backoff and jitter, and turns
non-JSON error pages (HTML from a proxy, plain-text rate limits) into one readable error."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

import requests

logger = logging.getLogger(__name__)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
NO_RETRY_MARKERS = ("search_quota_exceeded",)  # vast daily quota: retrying only burns time


class ApiError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status (0 for connection errors), ``body`` the parsed body."""

    def __init__(self, message: str, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def _snippet(text: str, limit: int = 200) -> str:
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


class HttpClient:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        name: str = "api",
    ):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(headers or {})
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep
        self.name = name

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_backoff)
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base / 2 + random.uniform(0, base / 2)  # jitter: several clients do not retry in lock-step

    def raw(
        self, method: str, path: str, *, retry_on: frozenset[int] = RETRY_STATUS, **kwargs: Any
    ) -> requests.Response:
        """One request with retries on connection errors, 429 and 5xx; returns the final response.

        Calls that create billable things pass ``retry_on={429}``: after a 5xx the thing may exist already.
        """
        url = self.url(path)
        kwargs.setdefault("timeout", self.timeout)
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(method, url, **kwargs)
            except requests.RequestException as e:
                if attempt == self.retries:
                    raise ApiError(f"{self.name}: {method} {url}: {type(e).__name__}: {e}") from None
                delay = self._delay(attempt, None)
                logger.warning("%s: %s %s failed (%s); retrying in %.1fs", self.name, method, url, e, delay)
                self.sleep(delay)
                continue
            retryable = resp.status_code in retry_on and not any(m in resp.text for m in NO_RETRY_MARKERS)
            if not retryable or attempt == self.retries:
                return resp
            delay = self._delay(attempt, resp.headers.get("Retry-After"))
            logger.warning(
                "%s: %s %s → HTTP %s (%s); retrying in %.1fs",
                self.name, method, path, resp.status_code, _snippet(resp.text, 80), delay,
            )  # fmt: skip
            self.sleep(delay)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like ``raw`` but returns the JSON body; any HTTP error or non-JSON body becomes ``ApiError``."""
        resp = self.raw(method, path, **kwargs)
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = None
            if resp.ok:
                raise ApiError(
                    f"{self.name}: {method} {path}: expected JSON, got {resp.headers.get('Content-Type', '?')}: "
                    f"{_snippet(resp.text)}",
                    resp.status_code,
                ) from None
        if not resp.ok:
            detail = error_message(body) if body is not None else _snippet(resp.text)
            raise ApiError(
                f"{self.name}: {method} {path} → HTTP {resp.status_code}: {detail}", resp.status_code, body
            )
        return body


def error_message(body: Any) -> str:
    """The most useful message of an API error body (vast: error/msg/message; GraphQL: errors[].message)."""
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list):
            return "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in body["errors"]
            )
        parts = [str(body[k]) for k in ("error", "msg", "message", "detail") if body.get(k)]
        if parts:
            return ": ".join(dict.fromkeys(parts))
    return _snippet(str(body))
