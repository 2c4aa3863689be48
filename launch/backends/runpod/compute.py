"""RunPod as a ``Compute``: GraphQL pods translated into ``InstanceState``; documented failure modes each mapped
to one typed outcome (see ../shared/docs/clouds.md, last section).

- states: ``desiredStatus`` RUNNING with ``runtime: null`` / CREATED / RESTARTING → PROVISIONING; EXITED / PAUSED
  → STOPPED (stopped by us, by the job itself, or an interruptible pod reclaimed by the host); TERMINATED or no
  pod → GONE; DEAD → FAILED. RunPod restarts an exited container and keeps RUNNING: a job's end is never a
  state here (the job stops its own pod).
- offers: ``lowestPrice`` with the host minimums; ``stockStatus`` null or the string "None" → no offer.
- create: pod named with the job id (``find`` looks it up), ``allowedCudaVersions``/``minMemoryInGb``/``minVcpuCount``,
  private images through ``containerRegistryAuthId``; "no longer any instances available" → NoCapacity; sent
  once — a lost answer is AmbiguousCreate.
- driver floor: RunPod shows no host driver before a deploy; the deploy names the host CUDA versions it accepts
  (``allowedCudaVersions``, sdks/graphql/manage-pods.mdx; exact ``major.minor`` matches): every version from
  the image's CUDA up (``qa_train.driver.cuda_versions_from``), i.e. hosts whose driver is at the floor or newer.
- logs: the v2 SSE stream with ``source=container``, resumed with ``Last-Event-ID`` (each line once).
"""

from __future__ import annotations

import hashlib
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
    RegistryAuth,
    RequestRejected,
)
from launch.backends.follow import TailFollower
from launch.backends.runpod.api import RunpodApi, RunpodApiError
from qa_train.driver import cuda_versions_from, min_driver_for_cuda

logger = logging.getLogger(__name__)
NO_CAPACITY_MARKERS = ("no longer any instances available", "no instances currently available")
BID_MARKERS = ("bid price is below", "minimum bid")
GONE_MARKERS = ("pod not found",)
REJECTED_CODES = frozenset({"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED"})
_STATES = {
    "CREATED": InstanceState.PROVISIONING,
    "RESTARTING": InstanceState.PROVISIONING,
    "EXITED": InstanceState.STOPPED,
    "PAUSED": InstanceState.STOPPED,
    "TERMINATED": InstanceState.GONE,
    "DEAD": InstanceState.FAILED,
}


def pod_state(pod: dict[str, Any] | None) -> InstanceStatus:
    """One ``pod`` answer → the shared state. An unknown ``desiredStatus`` raises (never guessed)."""
    if not pod:
        return InstanceStatus(InstanceState.GONE, "no such pod")
    desired = pod.get("desiredStatus")
    detail = f"{desired}: {pod.get('lastStatusChange') or ''}".rstrip(": ")
    machine = str(pod["machineId"]) if pod.get("machineId") else None
    if desired == "RUNNING":
        state = InstanceState.RUNNING if pod.get("runtime") else InstanceState.PROVISIONING
        return InstanceStatus(state, detail, None, machine)
    if desired in _STATES:
        return InstanceStatus(_STATES[desired], detail, None, machine)
    raise CloudError(f"runpod: pod: unknown desiredStatus {desired!r}", cloud="runpod", call="pod", status=200,
                     body=pod)  # fmt: skip


def in_stock(lowest_price: dict[str, Any]) -> bool:
    """``stockStatus`` is High/Medium/Low, or null / the string "None" when sold out."""
    stock = lowest_price.get("stockStatus")
    return bool(stock) and str(stock).strip().lower() not in ("none", "null")


def allowed_cuda(min_cuda: str | None) -> list[str] | None:
    """The host CUDA versions a deploy accepts: the image's and every newer one (None: no constraint)."""
    return cuda_versions_from(min_cuda) if min_cuda else None


class RunpodCompute(Compute):
    name = "runpod"

    def __init__(
        self,
        api_key: str | None = None,
        api_url: str | None = None,
        *,
        cloud_type: str = "ALL",
        bid_markup: float = 1.1,
        log_idle_s: float = 5.0,
        poll_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        key = base.api_key("runpod", "RUNPOD_API_KEY", api_key)
        self.api = RunpodApi(key, api_url, retries=retries, backoff=backoff)
        self.cloud_type = cloud_type
        self.bid_markup = bid_markup
        self.log_idle_s = log_idle_s
        self.poll_s = poll_s
        self.sleep = sleep
        self._auth_ids: dict[str, str] = {}

    # -- offers ------------------------------------------------------------------------------------------------
    def lowest_price_input(self, q: OfferQuery) -> dict[str, Any]:
        inp: dict[str, Any] = {"gpuCount": q.num_gpus}
        if q.min_ram_gb:
            inp["minMemoryInGb"] = q.min_ram_gb
        if q.min_vcpus:
            inp["minVcpuCount"] = q.min_vcpus
        return inp

    def offers(self, query: OfferQuery) -> list[Offer]:
        out = []
        n = query.num_gpus
        for gpu_id in query.profile.runpod_ids:
            for g in self.api.gpu_types(gpu_id, self.lowest_price_input(query)):
                lp = g.get("lowestPrice") or {}
                per_gpu = lp.get("minimumBidPrice") if query.interruptible else lp.get("uninterruptablePrice")
                if per_gpu is None or not in_stock(lp):
                    continue
                bid = round(float(per_gpu) * self.bid_markup, 4) if query.interruptible else None
                price = (bid or float(per_gpu)) * n
                if query.max_price is not None and price > query.max_price:
                    if not query.interruptible or float(per_gpu) * n > query.max_price:
                        continue
                    bid, price = round(query.max_price / n, 4), query.max_price
                out.append(Offer(
                    backend=self.name, offer_id=str(g["id"]), gpu_name=str(g.get("displayName") or g["id"]),
                    num_gpus=n, price_per_hour=round(price, 4), interruptible=query.interruptible,
                    bid_price=bid, extra={"stockStatus": lp.get("stockStatus"), "memoryInGb": g.get("memoryInGb"),
                                          "allowedCudaVersions": allowed_cuda(query.min_cuda),
                                          "min_driver": min_driver_for_cuda(query.min_cuda) if query.min_cuda else None},
                ))  # fmt: skip
        out.sort(key=lambda o: o.price_per_hour)
        return out

    # -- create ------------------------------------------------------------------------------------------------
    def pod_input(self, req: LaunchRequest, offer: Offer) -> dict[str, Any]:
        inp: dict[str, Any] = {
            "name": req.name,
            "imageName": req.image,
            "gpuTypeId": offer.offer_id,
            "gpuCount": req.gpu_count,
            "cloudType": self.cloud_type,
            "containerDiskInGb": req.disk_gb,
            "volumeInGb": 0,
            "dockerArgs": "",  # the image's ENTRYPOINT runs; everything it needs is in env
            "env": [{"key": k, "value": v} for k, v in req.env.items()],
            "startSsh": False,
        }
        if req.min_cuda:
            inp["allowedCudaVersions"] = allowed_cuda(req.min_cuda)
        if req.min_ram_gb:
            inp["minMemoryInGb"] = req.min_ram_gb
        if req.min_vcpus:
            inp["minVcpuCount"] = req.min_vcpus
        if offer.interruptible:
            inp["bidPerGpu"] = offer.bid_price
        return inp

    def create(self, request: LaunchRequest, offer: Offer | None) -> Instance:
        if offer is None:
            raise RequestRejected("runpod: create needs an offer", cloud="runpod", call="create")
        inp = self.pod_input(request, offer)
        if request.registry_auth:
            inp["containerRegistryAuthId"] = self.registry_auth_id(request.registry_auth)
        try:
            pod = self.api.deploy(inp, interruptible=offer.interruptible)
        except AmbiguousCreate:
            raise
        except RunpodApiError as e:
            raise self._create_error(e) from None
        return Instance(self.name, str(pod["id"]), offer)

    @staticmethod
    def _create_error(e: RunpodApiError) -> CloudError:
        text = " ".join(e.messages).lower() or str(e).lower()
        kw = {"cloud": "runpod", "call": e.call, "status": e.status, "body": e.body}
        if any(m in text for m in NO_CAPACITY_MARKERS + BID_MARKERS):
            return NoCapacity(str(e), **kw)
        if e.status >= 500:
            return AmbiguousCreate(str(e), **kw)
        if e.status in (400, 401, 403) or set(e.codes) & REJECTED_CODES:
            return RequestRejected(str(e), **kw)
        return e

    def registry_auth_id(self, auth: RegistryAuth) -> str:
        """``containerRegistryAuthId`` for these credentials: saved once under a name derived from them; an
        existing one with that name is reused. The password is never logged."""
        digest = hashlib.sha256(f"{auth.registry}\0{auth.username}\0{auth.password}".encode()).hexdigest()[
            :16
        ]
        name = f"qa-expert-{digest}"
        if name in self._auth_ids:
            return self._auth_ids[name]
        try:
            auth_id = self.api.save_registry_auth(name, auth.username, auth.password)
        except RunpodApiError as e:
            if not any("exist" in m.lower() for m in e.messages):
                raise RequestRejected(f"runpod: saveRegistryAuth for {auth.registry} refused: {e}", cloud="runpod",
                                      call="saveRegistryAuth", status=e.status) from None  # fmt: skip
            found = [a for a in self.api.registry_auths() if a.get("name") == name]
            if not found:
                raise
            auth_id = str(found[0]["id"])
        self._auth_ids[name] = auth_id
        return auth_id

    # -- status / logs / stop / destroy / find --------------------------------------------------------------
    def status(self, instance_id: str) -> InstanceStatus:
        return pod_state(self.api.pod(instance_id))

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        last_id: str | None = None
        fallback = TailFollower()  # only for a stream whose events carry no id
        first = True
        while True:
            window: list[str] = []
            for ev_id, line in self.api.log_events(instance_id, tail=tail, last_event_id=last_id,
                                                   read_timeout=self.log_idle_s):  # fmt: skip
                if ev_id:
                    last_id = ev_id
                    yield line
                else:
                    window.append(line)
            if window:
                yield from (window if first else fallback.feed(window))
                if first:
                    fallback.feed(window)
            first = False
            if not follow or self.status(instance_id).state not in ACTIVE_STATES:
                return
            self.sleep(self.poll_s)

    def stop(self, instance_id: str) -> None:
        self.api.stop_pod(instance_id)

    def destroy(self, instance_id: str) -> None:
        try:
            self.api.terminate_pod(instance_id)
        except RunpodApiError as e:
            if any(m in " ".join(e.messages).lower() for m in GONE_MARKERS):
                return  # already gone = done
            raise

    def find(self, name: str) -> list[str]:
        return [str(p["id"]) for p in self.api.my_pods() if p.get("name") == name]
