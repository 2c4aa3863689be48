"""vast.ai as a ``Compute``: vast's raw fields translated into ``InstanceState``; its documented failure modes
(see ../shared/docs/clouds.md, last section) each mapped to one typed outcome.

- create: request limits checked before sending (``x-input-validation`` of create_instance.yaml); 400
  ``invalid_args``/``invalid_price``/``no_ssh_key_for_vm`` → RequestRejected; ``no_such_ask``/404/410 →
  NoCapacity; an error carrying ``new_contract`` (spot trap) → that instance destroyed, then raised; a lost
  answer/5xx → AmbiguousCreate (never re-sent). Bids send ``price`` and ``cancel_unavail: true``.
- status: outbid/preempted = ``cur_state == intended_status == next_state == "stopped"`` at any
  ``actual_status``; ``unknown``/``offline``/"OCI runtime create failed" → FAILED; ``exited`` → EXITED (vast never
  reports an exit code).
- logs: ``request_logs`` → presigned ``result_url`` fetched without the API key; ``follow`` finds the overlap of
  successive tail windows.
- driver floor: offers carry ``cuda_max_good`` (the host's highest CUDA, from its driver) and ``driver_version``
  ("570.124.06", search_offers.yaml). Both are checked here, not in the search, so an offer below the image's
  floor (``qa_train.driver.MIN_DRIVER`` of its CUDA) is *named* in ``skipped`` instead of silently missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from launch.backends import base
from launch.backends.base import (
    ACTIVE_STATES,
    AmbiguousCreate,
    CloudError,
    Compute,
    Instance,
    InstanceState,
    InstanceStatus,
    LaunchRequest,
    NoCapacity,
    Offer,
    OfferQuery,
    RequestRejected,
)
from launch.backends.follow import TailFollower
from launch.backends.vast.api import VastApi, VastApiError
from qa_train.driver import DriverError, at_least, min_driver_for_cuda, parse_version

logger = logging.getLogger(__name__)

# create_instance.yaml, x-input-validation
MAX_ENV_VALUE = 256
MAX_ENV_TOTAL = 32768
MAX_IMAGE = 1024
MAX_ARGS = 4096  # args + args_str + onstart together
MAX_LABEL = 256
REJECTED_CODES = frozenset({"invalid_args", "invalid_price", "no_ssh_key_for_vm"})
PROVISIONING_ERRORS = ("oci runtime create failed", "error response from daemon")
_PROVISIONING = {None, "loading", "created", "scheduling", "rebooting"}
_STATES = {
    "running": InstanceState.RUNNING,
    "exited": InstanceState.EXITED,
    "stopped": InstanceState.STOPPED,
    "frozen": InstanceState.STOPPED,  # paused by request, memory kept
    "unknown": InstanceState.FAILED,  # no heartbeat: the docs say it never reaches running
    "offline": InstanceState.FAILED,  # host disconnected
}


def check_limits(payload: dict[str, Any]) -> None:
    """vast's documented request limits, checked before anything is sent. Names the env var, never its value."""
    env: dict[str, str] = payload.get("env") or {}
    for key, value in env.items():
        if len(str(value)) > MAX_ENV_VALUE:
            raise RequestRejected(
                f"vast: env {key} is {len(str(value))} characters; vast accepts at most {MAX_ENV_VALUE} per value",
                cloud="vast", call="create instance",
            )  # fmt: skip
    total = sum(len(k) + len(str(v)) for k, v in env.items())
    if total > MAX_ENV_TOTAL:
        raise RequestRejected(f"vast: the env totals {total} characters; vast accepts at most {MAX_ENV_TOTAL}",
                              cloud="vast", call="create instance")  # fmt: skip
    if len(payload.get("image") or "") > MAX_IMAGE:
        raise RequestRejected(f"vast: image reference longer than {MAX_IMAGE} characters", cloud="vast")
    args = sum(len(a) for a in payload.get("args") or []) + len(payload.get("args_str") or "")
    if args + len(payload.get("onstart") or "") > MAX_ARGS:
        raise RequestRejected(f"vast: args + onstart longer than {MAX_ARGS} characters", cloud="vast")
    if len(payload.get("label") or "") > MAX_LABEL:
        raise RequestRejected(f"vast: label longer than {MAX_LABEL} characters", cloud="vast")


def instance_state(inst: dict[str, Any] | None) -> InstanceStatus:
    """One ``show instance`` answer → the shared state. Unknown ``actual_status`` values raise (never guessed)."""
    if not inst:
        return InstanceStatus(InstanceState.GONE, "no such instance")
    actual = inst.get("actual_status")
    msg = str(inst.get("status_msg") or "").strip()
    detail = f"{actual}: {msg}" if msg else str(actual)
    machine = str(inst["machine_id"]) if inst.get("machine_id") is not None else None
    if inst.get("cur_state") == "unloaded":  # released on destroy
        return InstanceStatus(InstanceState.GONE, detail, None, machine)
    if inst.get("cur_state") == inst.get("intended_status") == inst.get("next_state") == "stopped":
        return InstanceStatus(InstanceState.STOPPED, detail, None, machine)  # outbid / preempted / stopped
    if any(m in msg.lower() for m in PROVISIONING_ERRORS):
        return InstanceStatus(InstanceState.FAILED, detail, None, machine)
    if actual in _PROVISIONING:
        return InstanceStatus(InstanceState.PROVISIONING, detail, None, machine)
    if actual in _STATES:
        return InstanceStatus(_STATES[actual], detail, None, machine)
    raise CloudError(f"vast: show instance: unknown actual_status {actual!r} ({msg})", cloud="vast",
                     call="show instance", status=200, body=inst)  # fmt: skip


class VastCompute(Compute):
    name = "vast"

    def __init__(
        self,
        api_key: str | None = None,
        api_url: str | None = None,
        *,
        min_reliability: float = 0.95,
        bid_markup: float = 1.1,
        logs_ready_s: float = 60.0,
        poll_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        key = base.api_key("vast", "VAST_API_KEY", api_key)
        self.api = VastApi(key, api_url, retries=retries, backoff=backoff)
        self.min_reliability = min_reliability
        self.bid_markup = bid_markup
        self.logs_ready_s = logs_ready_s
        self.poll_s = poll_s
        self.sleep = sleep
        # offers the last ``offers`` call left out for the driver floor, each with why
        self.skipped: list[str] = []

    # -- offers ------------------------------------------------------------------------------------------------
    def search_query(self, q: OfferQuery) -> dict[str, Any]:
        p = q.profile
        query: dict[str, Any] = {
            "gpu_name": {"in": list(p.vast_names)},
            "num_gpus": {"eq": q.num_gpus},
            "gpu_ram": {"gte": p.vast_min_ram_mb},
            "reliability2": {"gte": self.min_reliability},
            "verified": {"eq": True},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "disk_space": {"gte": q.disk_gb},
        }
        if p.vast_max_ram_mb:
            query["gpu_ram"]["lte"] = p.vast_max_ram_mb
        if q.min_ram_gb:
            query["cpu_ram"] = {"gte": q.min_ram_gb * 1024}  # MB
        if q.min_vcpus:
            query["cpu_cores_effective"] = {"gte": q.min_vcpus}
        if q.max_price is not None and not q.interruptible:
            query["dph_total"] = {"lte": q.max_price}
        query.update({
            "order": [["dph_total", "asc"]],
            "type": "bid" if q.interruptible else "on-demand",
            "allocated_storage": q.disk_gb,
            "limit": 50,  # the driver floor is applied to the answer (below), so ask for a few more
        })  # fmt: skip
        return query

    @staticmethod
    def below_floor(o: dict[str, Any], min_cuda: str | None) -> str | None:
        """Why this offer's host cannot run an image built for CUDA ``min_cuda`` (None when it can)."""
        if not min_cuda:
            return None
        need = min_driver_for_cuda(min_cuda)
        drv, cmg = o.get("driver_version"), o.get("cuda_max_good")
        try:
            ok_drv = drv is None or at_least(str(drv), need)
        except DriverError:
            ok_drv = False
        ok_cuda = cmg is not None and parse_version(f"{float(cmg):.1f}") >= parse_version(min_cuda)
        if ok_drv and ok_cuda:
            return None
        return (
            f"driver {drv or '?'} (CUDA {cmg if cmg is not None else '?'}) is below {need} (CUDA {min_cuda})"
        )

    def offers(self, query: OfferQuery) -> list[Offer]:
        self.skipped = []
        if query.profile.is_cpu:
            return []
        out = []
        for o in self.api.search_offers(self.search_query(query)):
            why = self.below_floor(o, query.min_cuda)
            if why:
                self.skipped.append(
                    f"vast offer {o.get('id')} ({o.get('gpu_name')}, ${o.get('dph_total')}/h): {why}"
                )
                continue
            price = float(o.get("dph_total") or 0)
            bid = None
            if query.interruptible:
                min_bid = float(o.get("min_bid") or price)
                # a little over the current minimum, so a small price move does not stop us at once
                bid = round(min_bid * self.bid_markup, 4)
                if query.max_price is not None:
                    if min_bid > query.max_price:
                        continue
                    bid = min(bid, query.max_price)
                price = bid
            elif query.max_price is not None and price > query.max_price:
                continue
            out.append(Offer(
                backend=self.name, offer_id=str(o["id"]), gpu_name=str(o.get("gpu_name")),
                num_gpus=int(o.get("num_gpus") or query.num_gpus), price_per_hour=price,
                interruptible=query.interruptible, reliability=o.get("reliability2", o.get("reliability")),
                bid_price=bid,
                extra={k: o.get(k) for k in ("machine_id", "gpu_ram", "cuda_max_good", "driver_version", "cpu_ram",
                                             "cpu_cores_effective", "geolocation")},
            ))  # fmt: skip
        out.sort(key=lambda x: x.price_per_hour)
        return out

    # -- create ------------------------------------------------------------------------------------------------
    def create_payload(self, req: LaunchRequest, offer: Offer) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "client_id": "me",
            "image": req.image,
            "disk": req.disk_gb,
            "env": dict(req.env),  # a dict, as vast-cli sends it; values only ever here
            "runtype": "args",  # run the image's ENTRYPOINT (python -m qa_train run), no ssh/jupyter wrapper
            "args": [],
            "label": req.name,
            "cancel_unavail": True,  # an interruptible offer that cannot start now → 410, not a stopped instance
        }
        if offer.interruptible:
            payload["price"] = offer.bid_price  # without it vast rents on-demand even from a bid search
        if req.registry_auth:
            a = req.registry_auth
            payload["image_login"] = f"-u {a.username} -p {a.password} {a.registry}"
        return payload

    def create(self, request: LaunchRequest, offer: Offer | None) -> Instance:
        if offer is None:
            raise RequestRejected("vast: create needs an offer", cloud="vast", call="create instance")
        payload = self.create_payload(request, offer)
        check_limits(payload)
        try:
            body = self.api.create_instance(offer.offer_id, payload)
        except AmbiguousCreate:
            raise
        except VastApiError as e:
            raise self._create_error(e, offer) from None
        return Instance(self.name, str(body["new_contract"]), offer)

    def _create_error(self, e: VastApiError, offer: Offer) -> CloudError:
        """What a failed create means; an instance it made anyway (spot trap) is destroyed first."""
        if e.new_contract:
            logger.warning("vast: create on offer %s failed (%s) but made instance %s; destroying it",
                           offer.offer_id, e.code or e.status, e.new_contract)  # fmt: skip
            try:
                self.destroy(e.new_contract)
            except CloudError as de:
                return AmbiguousCreate(
                    f"{e} — and destroying the instance it made failed: {de}",
                    instance_id=e.new_contract,
                    cloud="vast",
                    call=e.call,
                    status=e.status,
                )
            msg = f"{e} (instance {e.new_contract} was created stopped and is destroyed)"
            kind = RequestRejected if e.code in REJECTED_CODES else NoCapacity
            return kind(msg, cloud="vast", call=e.call, status=e.status, body=e.body)
        if e.code == "no_such_ask" or e.status in (404, 410):  # 404 answers with error "invalid_args"
            return NoCapacity(str(e), cloud="vast", call=e.call, status=e.status, body=e.body)
        if e.status == 400 or e.code in REJECTED_CODES:
            return RequestRejected(str(e), cloud="vast", call=e.call, status=e.status, body=e.body)
        if e.status >= 500:
            return AmbiguousCreate(str(e), cloud="vast", call=e.call, status=e.status, body=e.body)
        return e

    # -- status / logs / stop / destroy / find --------------------------------------------------------------
    def status(self, instance_id: str) -> InstanceStatus:
        return instance_state(self.api.show_instance(instance_id))

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        follower = TailFollower()
        while True:
            window = self._fetch_logs(instance_id, tail).splitlines()
            new = follower.feed(window)
            if follower.gap:
                logger.warning("vast: logs of %s moved on by more than %d lines; some may be missing",
                               instance_id, tail)  # fmt: skip
            yield from new
            if not follow or self.status(instance_id).state not in ACTIVE_STATES:
                return
            self.sleep(self.poll_s)

    def _fetch_logs(self, instance_id: str, tail: int) -> str:
        url = self.api.request_logs(instance_id, tail)
        end = time.monotonic() + self.logs_ready_s
        while True:
            text = self.api.fetch_result(url)
            if text is not None:
                return text
            if time.monotonic() > end:
                raise CloudError(f"vast: logs of {instance_id} not uploaded after {self.logs_ready_s:.0f}s",
                                 cloud="vast", call="fetch logs")  # fmt: skip
            self.sleep(min(self.poll_s, 1.0))

    def stop(self, instance_id: str) -> None:
        self.api.manage_instance(instance_id, "stopped")

    def destroy(self, instance_id: str) -> None:
        try:
            self.api.destroy_instance(instance_id)
        except VastApiError as e:
            if e.code in ("no_such_instance", "not_found") or e.status == 404:
                return  # already gone = done
            raise

    def find(self, name: str) -> list[str]:
        return [str(i["id"]) for i in self.api.list_instances(label=name)]
