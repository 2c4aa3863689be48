"""A thin typed client of the vast.ai REST API (``/api/v0``, ``/api/v1``), as its OpenAPI reference documents it
(github:vast-ai/docs ``api-reference/openapi/yaml/*.yaml``) and vast-cli calls it.

Each method is one call. Errors come back as ``VastApiError`` carrying the HTTP status, vast's ``error`` code
(``invalid_args``, ``no_such_ask``, ``no_such_instance``…) and, for a create that made an instance although it
failed (the spot trap), that instance's id in ``new_contract``. Deciding what an error means for a launch is the
compute's job (``compute.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from launch.backends.base import CloudError
from launch.backends.transport import Answer, Transport, error_message

DEFAULT_URL = "https://console.vast.ai"


class VastApiError(CloudError):
    """A vast call answered with an error. ``code``: vast's ``error`` field; ``new_contract``: an instance created
    despite the error (it bills until destroyed)."""

    def __init__(self, message: str, *, code: str = "", new_contract: str | None = None, **kw: Any):
        super().__init__(message, cloud="vast", **kw)
        self.code = code
        self.new_contract = new_contract


class VastApi:
    def __init__(self, api_key: str, base_url: str | None = None, *, retries: int = 5, backoff: float = 0.5):
        self.base_url = (base_url or os.environ.get("VAST_API_URL") or DEFAULT_URL).rstrip("/")
        self.http = Transport(
            "vast", {"Authorization": f"Bearer {api_key}"}, retries=retries, backoff=backoff
        )

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    @staticmethod
    def _raise(call: str, a: Answer) -> None:
        """vast reports failure by status or by ``"success": false`` in a 200."""
        body = a.body if isinstance(a.body, dict) else {}
        if a.ok and body.get("success", True) is not False:
            return
        contract = body.get("new_contract")
        raise VastApiError(
            f"vast: {call} → HTTP {a.status}: {error_message(a.body)}",
            call=call, status=a.status, body=a.body, code=str(body.get("error") or ""),
            new_contract=str(contract) if contract else None,
        )  # fmt: skip

    # -- offers ----------------------------------------------------------------------------------------------
    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST /api/v0/bundles/`` with ``{field: {op: value}}`` filters plus order/type/limit/allocated_storage."""
        a = self.http.call("search offers", "POST", self._url("/api/v0/bundles/"), json=query)
        self._raise("search offers", a)
        offers = a.body.get("offers") if isinstance(a.body, dict) else None
        if not isinstance(offers, list):
            raise CloudError(f"vast: search offers: no 'offers' list in the answer: {error_message(a.body)}",
                             cloud="vast", call="search offers", status=a.status)  # fmt: skip
        return offers

    # -- instances -------------------------------------------------------------------------------------------
    def create_instance(self, ask_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/v0/asks/{id}/`` — sent once, never retried. Returns ``{success, new_contract, …}``."""
        call = f"create instance (ask {ask_id})"
        a = self.http.create(call, "PUT", self._url(f"/api/v0/asks/{ask_id}/"), json=payload)
        self._raise(call, a)
        if not isinstance(a.body, dict) or not a.body.get("new_contract"):
            raise VastApiError(f"vast: {call}: success without new_contract: {error_message(a.body)}",
                               call=call, status=a.status, body=a.body)  # fmt: skip
        return a.body

    def show_instance(self, instance_id: str) -> dict[str, Any] | None:
        """``GET /api/v0/instances/{id}/?owner=me`` → the instance, or None when it no longer exists."""
        call = f"show instance {instance_id}"
        a = self.http.call(
            call, "GET", self._url(f"/api/v0/instances/{instance_id}/"), params={"owner": "me"}
        )
        if a.status == 404:
            return None
        self._raise(call, a)
        inst = a.body.get("instances") if isinstance(a.body, dict) else None
        if isinstance(inst, list):  # some deployments answer a one-element list
            inst = inst[0] if inst else None
        return inst or None

    def list_instances(self, label: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/v1/instances/`` over every page (``next_token``), optionally filtered by label."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 25, "select_cols": json.dumps(["id", "label", "actual_status"])}
        if label is not None:
            params["select_filters"] = json.dumps({"label": {"eq": label}})
        for _ in range(1000):
            a = self.http.call("show instances", "GET", self._url("/api/v1/instances/"), params=params)
            self._raise("show instances", a)
            out += [i for i in a.body.get("instances") or [] if label is None or i.get("label") == label]
            token = a.body.get("next_token")
            if not token:
                break
            params["after_token"] = token
        return out

    def manage_instance(self, instance_id: str, state: str) -> None:
        """``PUT /api/v0/instances/{id}/`` ``{"state": "stopped"|"running"}``."""
        call = f"{'stop' if state == 'stopped' else 'start'} instance {instance_id}"
        a = self.http.call(call, "PUT", self._url(f"/api/v0/instances/{instance_id}/"), json={"state": state})
        self._raise(call, a)

    def destroy_instance(self, instance_id: str) -> None:
        """``DELETE /api/v0/instances/{id}/``; a 200 with ``success: false`` raises (the instance still bills)."""
        call = f"destroy instance {instance_id}"
        a = self.http.call(call, "DELETE", self._url(f"/api/v0/instances/{instance_id}/"))
        self._raise(call, a)

    # -- logs ------------------------------------------------------------------------------------------------
    def request_logs(self, instance_id: str, tail: int) -> str:
        """``PUT /api/v0/instances/request_logs/{id}/`` → a presigned ``result_url`` (uploaded after a delay)."""
        call = f"request logs {instance_id}"
        a = self.http.call(call, "PUT", self._url(f"/api/v0/instances/request_logs/{instance_id}/"),
                           json={"tail": str(tail)})  # fmt: skip
        self._raise(call, a)
        url = a.body.get("result_url") if isinstance(a.body, dict) else None
        if not url:
            raise VastApiError(
                f"vast: {call}: no result_url: {error_message(a.body)}", call=call, status=a.status
            )
        return str(url)

    def fetch_result(self, url: str) -> str | None:
        """GET a presigned result URL with no Authorization header; None while it is not uploaded yet (403/404)."""
        resp = self.http.plain_get("fetch logs", url)
        if resp.status_code == 200:
            return resp.text
        if resp.status_code in (403, 404):
            return None
        raise CloudError(f"vast: fetch logs → HTTP {resp.status_code}: {resp.text[:200]}", cloud="vast",
                         call="fetch logs", status=resp.status_code)  # fmt: skip
