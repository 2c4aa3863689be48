"""vast.ai through its REST API directly (not the vastai SDK; see ../shared/docs/clouds.md).

Offer search filters by the profile's gpu names/RAM; creation goes through offers cheapest first — an offer that
is gone → the next one; anything that fails after an instance exists (including the spot trap: a low bid creates
the instance *stopped* and the error still carries ``new_contract``) destroys it before moving on or raising.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from launch.backends.base import (
    BackendError,
    CloudBackend,
    Instance,
    NoCapacity,
    Offer,
    Status,
)
from launch.gpus import GpuProfile
from launch.backends.transport import ApiError, HttpClient, error_message
from qa_train.spec import RenderedSpec

logger = logging.getLogger(__name__)
DEFAULT_URL = "https://console.vast.ai"
_STATES = {
    None: "PENDING",
    "loading": "PENDING",
    "created": "PENDING",
    "scheduling": "PENDING",
    "rebooting": "PENDING",
    "running": "RUNNING",
    "exited": "EXITED",
    "stopped": "STOPPED",
    "frozen": "STOPPED",
    "offline": "FAILED",
    "unknown": "PENDING",
}
PROVISION_ERRORS = ("OCI runtime create failed", "error response from daemon")


class VastBackend(CloudBackend):
    name = "vast"

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        poll_s: float = 5.0,
        ready_timeout_s: float = 1800.0,
        max_offers: int = 5,
        max_failed_launches: int = 2,
        min_reliability: float = 0.95,
        sleep: Callable[[float], None] = time.sleep,
        http_backoff: float = 0.5,
    ):
        self.api_url = (api_url or os.environ.get("VAST_API_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("VAST_API_KEY")
        if not key:
            raise BackendError("vast: no API key (set VAST_API_KEY or VAST_API_KEY_FILE)")
        self.http = HttpClient(
            self.api_url, {"Authorization": f"Bearer {key}"}, sleep=sleep, backoff=http_backoff, name="vast"
        )
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self.max_offers = max_offers
        self.max_failed_launches = max_failed_launches
        self.min_reliability = min_reliability
        self.sleep = sleep

    # -- offers ------------------------------------------------------------------------------------------
    def search_query(
        self, profile: GpuProfile, num_gpus: int, interruptible: bool, max_price: float | None, disk_gb: int
    ) -> dict[str, Any]:
        q: dict[str, Any] = {
            "gpu_name": {"in": list(profile.vast_names)},
            "num_gpus": {"eq": num_gpus},
            "gpu_ram": {"gte": profile.vast_min_ram_mb},
            "reliability2": {"gte": self.min_reliability},
            "verified": {"eq": True},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "disk_space": {"gte": disk_gb},
            "order": [["dph_total", "asc"]],
            "type": "bid" if interruptible else "on-demand",
            "allocated_storage": disk_gb,
            "limit": 20,
        }
        if profile.vast_max_ram_mb:
            q["gpu_ram"]["lte"] = profile.vast_max_ram_mb
        if max_price is not None and not interruptible:
            q["dph_total"] = {"lte": max_price}
        return q

    def offers(
        self,
        profile: GpuProfile,
        num_gpus: int,
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        disk_gb: int = 50,
    ) -> list[Offer]:
        if profile.is_cpu:
            return []
        body = self.http.request(
            "POST",
            "/api/v0/bundles/",
            json=self.search_query(profile, num_gpus, interruptible, max_price, disk_gb),
        )
        raw = (body or {}).get("offers") or []
        out = []
        for o in raw:
            price = float(o.get("dph_total") or 0)
            bid = None
            if interruptible:
                # bid a little over the current minimum so a tiny price move does not stop us at once
                bid = round(float(o.get("min_bid") or price) * 1.1, 4)
                if max_price is not None:
                    if float(o.get("min_bid") or price) > max_price:
                        continue
                    bid = min(bid, max_price)
                price = bid
            elif max_price is not None and price > max_price:
                continue
            out.append(
                Offer(
                    backend=self.name,
                    offer_id=str(o["id"]),
                    gpu_name=str(o.get("gpu_name")),
                    num_gpus=int(o.get("num_gpus") or num_gpus),
                    price_per_hour=price,
                    interruptible=interruptible,
                    reliability=o.get("reliability2", o.get("reliability")),
                    bid_price=bid,
                    extra={
                        "machine_id": o.get("machine_id"),
                        "gpu_ram": o.get("gpu_ram"),
                        "geolocation": o.get("geolocation"),
                    },
                )
            )
        out.sort(key=lambda x: x.price_per_hour)
        return out

    # -- create ------------------------------------------------------------------------------------------
    def create_payload(self, spec: RenderedSpec, env: dict[str, str], offer: Offer) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "client_id": "me",
            "image": spec.image,
            "disk": spec.disk_gb,
            "env": env,
            # "args": the image's ENTRYPOINT (python -m qa_train run) runs with no extra arguments; the spec is in env
            "runtype": "args",
            "args": [],
            "label": spec.job_id,
        }
        if offer.interruptible:
            payload["price"] = offer.bid_price  # without it vast rents on-demand even from a bid search
        return payload

    def _create_one(
        self,
        spec: RenderedSpec,
        env: dict[str, str],
        offer: Offer,
        on_created: Callable[[Instance], None] | None,
    ) -> Instance:
        resp = self.http.raw(
            "PUT",
            f"/api/v0/asks/{offer.offer_id}/",
            json=self.create_payload(spec, env, offer),
            retry_on=frozenset({429}),  # after a 5xx the instance may exist: never blindly create twice
        )
        try:
            body = resp.json()
        except ValueError:
            body = None
        contract = body.get("new_contract") if isinstance(body, dict) else None
        ok = resp.ok and isinstance(body, dict) and body.get("success", True) is not False and contract
        if not ok:
            msg = error_message(body) if body is not None else f"HTTP {resp.status_code}: {resp.text[:200]}"
            if not contract and resp.status_code >= 500:
                # the gateway failed, but the instance may exist: find it by our label and destroy it
                leaked = self.find_by_label(spec.job_id)
                for iid in leaked:
                    logger.warning(
                        "vast: create answered HTTP %s but instance %s exists; destroying it",
                        resp.status_code,
                        iid,
                    )
                    self.cancel(iid)
                raise BackendError(
                    f"{msg}" + (f" (destroyed instance(s) {', '.join(leaked)})" if leaked else "")
                )
            if contract:  # spot trap: created (stopped) although the call "failed" → destroy it now
                logger.warning(
                    "vast: create on offer %s failed (%s) but created instance %s; destroying it",
                    offer.offer_id,
                    msg,
                    contract,
                )
                self.cancel(str(contract))
                raise BackendError(f"created stopped and destroyed (instance {contract}): {msg}")
            if resp.status_code in (400, 404, 410) or (
                isinstance(body, dict) and body.get("error") == "no_such_ask"
            ):
                raise NoCapacity(msg)
            raise BackendError(msg)
        inst = Instance(self.name, str(contract), offer)
        return self._ready_or_destroyed(inst, on_created)

    def find_by_label(self, label: str) -> list[str]:
        """Instance ids carrying ``label`` (our job id), across pages of ``GET /api/v1/instances/``."""
        out: list[str] = []
        token = None
        for _ in range(50):
            params: dict[str, Any] = {"limit": 100}
            if token:
                params["after_token"] = token
            body = self.http.request("GET", "/api/v1/instances/", params=params) or {}
            out += [str(i["id"]) for i in body.get("instances") or [] if i.get("label") == label]
            token = body.get("next_token")
            if not token:
                break
        return out

    # -- status / logs / cancel --------------------------------------------------------------------------
    def status(self, instance_id: str) -> Status:
        body = self.http.request("GET", f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        inst = (body or {}).get("instances") if isinstance(body, dict) else None
        if isinstance(inst, list):
            inst = inst[0] if inst else None
        if not inst:
            return Status("GONE", "no such instance")
        actual = inst.get("actual_status")
        msg = str(inst.get("status_msg") or "")
        state = _STATES.get(actual, "PENDING")
        if any(m.lower() in msg.lower() for m in PROVISION_ERRORS):
            state = "FAILED"
        return Status(state, msg or str(actual), None, inst)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        seen = 0
        while True:
            text = self._fetch_logs(instance_id, tail)
            lines = text.splitlines()
            # vast returns a tail, not an offset: print what is new since the last fetch
            new = lines[seen:] if len(lines) >= seen else lines
            yield from new
            seen = len(lines)
            if not follow or self.status(instance_id).state not in ("PENDING", "RUNNING"):
                return
            self.sleep(self.poll_s)

    def _fetch_logs(self, instance_id: str, tail: int, deadline_s: float = 60.0) -> str:
        body = self.http.request(
            "PUT", f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": str(tail)}
        )
        url = (body or {}).get("result_url")
        if not url:
            raise BackendError(f"vast: request_logs gave no result_url: {error_message(body)}")
        end = time.monotonic() + deadline_s
        while True:
            resp = self.http.raw("GET", url)
            if resp.status_code == 200:
                return resp.text
            if time.monotonic() > end:
                raise BackendError(f"vast: logs for {instance_id} not ready after {deadline_s:.0f}s")
            self.sleep(min(self.poll_s, 1.0))

    def cancel(self, instance_id: str) -> None:
        try:
            self.http.request("DELETE", f"/api/v0/instances/{instance_id}/")
        except ApiError as e:
            if e.status == 404 or (isinstance(e.body, dict) and e.body.get("error") == "no_such_instance"):
                return  # already gone = done
            raise BackendError(f"vast: destroy of instance {instance_id} failed: {e}") from e
