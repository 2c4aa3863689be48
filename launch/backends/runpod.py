"""RunPod through GraphQL with **variables** (never string interpolation: a quote in an env value must not
break the query), plus the REST v2 server-sent-events log stream. See ../shared/docs/clouds.md.

GraphQL reports errors inside HTTP 200 (``errors``); they become ``BackendError`` (or ``NoCapacity`` for "no
longer any instances available", which moves on to the next GPU type).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

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
DEFAULT_URL = "https://api.runpod.io/graphql"

Q_GPU_TYPES = """
query GpuTypes($input: GpuTypeFilter, $lowestPriceInput: GpuLowestPriceInput!) {
  gpuTypes(input: $input) {
    id displayName memoryInGb securePrice communityPrice secureSpotPrice communitySpotPrice
    lowestPrice(input: $lowestPriceInput) { minimumBidPrice uninterruptablePrice stockStatus }
  }
}"""
M_ON_DEMAND = """
mutation Deploy($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { id imageName machineId }
}"""
M_SPOT = """
mutation DeploySpot($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id imageName machineId }
}"""
Q_POD = """
query Pod($input: PodFilter!) {
  pod(input: $input) { id name desiredStatus lastStatusChange costPerHr runtime { uptimeInSeconds } }
}"""
M_TERMINATE = """
mutation Terminate($input: PodTerminateInput!) {
  podTerminate(input: $input)
}"""


class RunpodBackend(CloudBackend):
    name = "runpod"

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        poll_s: float = 5.0,
        ready_timeout_s: float = 1800.0,
        max_failed_launches: int = 2,
        cloud_type: str = "ALL",
        sleep: Callable[[float], None] = time.sleep,
        http_backoff: float = 0.5,
    ):
        self.api_url = api_url or os.environ.get("RUNPOD_API_URL") or DEFAULT_URL
        key = api_key or os.environ.get("RUNPOD_API_KEY")
        if not key:
            raise BackendError("runpod: no API key (set RUNPOD_API_KEY or RUNPOD_API_KEY_FILE)")
        parts = urlsplit(self.api_url)
        self.rest_base = f"{parts.scheme}://{parts.netloc}"
        self.http = HttpClient(
            self.rest_base,
            {"Authorization": f"Bearer {key}"},
            sleep=sleep,
            backoff=http_backoff,
            name="runpod",
        )
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self.max_failed_launches = max_failed_launches
        self.cloud_type = cloud_type
        self.sleep = sleep

    def gql(self, query: str, variables: dict[str, Any], *, create: bool = False) -> dict[str, Any]:
        """POST one operation; GraphQL ``errors`` (HTTP 200) and HTTP errors become exceptions."""
        retry = frozenset({429}) if create else None
        kwargs: dict[str, Any] = {"json": {"query": query, "variables": variables}}
        if retry is not None:
            kwargs["retry_on"] = retry
        try:
            resp = self.http.raw("POST", self.api_url, **kwargs)
        except ApiError as e:
            raise BackendError(str(e)) from e
        if resp.status_code == 401:
            raise BackendError("runpod: HTTP 401: the API key was rejected (check RUNPOD_API_KEY)")
        try:
            body = resp.json()
        except ValueError:
            raise BackendError(f"runpod: HTTP {resp.status_code}: {error_message(resp.text)}") from None
        if isinstance(body, dict) and body.get("errors"):
            msg = error_message(body)
            if "no longer any instances available" in msg.lower():
                raise NoCapacity(f"runpod: {msg}")
            raise BackendError(f"runpod: {msg}")
        if not resp.ok or not isinstance(body, dict) or "data" not in body:
            raise BackendError(f"runpod: HTTP {resp.status_code}: {error_message(body)}")
        return body["data"] or {}

    # -- offers ------------------------------------------------------------------------------------------
    def offers(
        self,
        profile: GpuProfile,
        num_gpus: int,
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        disk_gb: int = 50,
    ) -> list[Offer]:
        out = []
        for gpu_id in profile.runpod_ids:
            data = self.gql(
                Q_GPU_TYPES, {"input": {"id": gpu_id}, "lowestPriceInput": {"gpuCount": num_gpus}}
            )
            for g in data.get("gpuTypes") or []:
                lp = g.get("lowestPrice") or {}
                per_gpu = lp.get("minimumBidPrice") if interruptible else lp.get("uninterruptablePrice")
                if per_gpu is None or not lp.get("stockStatus"):
                    continue
                bid = round(float(per_gpu) * 1.1, 4) if interruptible else None
                price = (bid or float(per_gpu)) * num_gpus
                if max_price is not None and price > max_price:
                    if not interruptible or float(per_gpu) * num_gpus > max_price:
                        continue
                    bid, price = max_price / num_gpus, max_price
                out.append(
                    Offer(
                        backend=self.name,
                        offer_id=g["id"],
                        gpu_name=g.get("displayName") or g["id"],
                        num_gpus=num_gpus,
                        price_per_hour=round(price, 4),
                        interruptible=interruptible,
                        reliability=None,
                        bid_price=bid,
                        extra={"stockStatus": lp.get("stockStatus"), "memoryInGb": g.get("memoryInGb")},
                    )
                )
        out.sort(key=lambda o: o.price_per_hour)
        return out

    # -- create ------------------------------------------------------------------------------------------
    def create_input(self, spec: RenderedSpec, env: dict[str, str], offer: Offer) -> dict[str, Any]:
        inp: dict[str, Any] = {
            "name": spec.job_id,
            "imageName": spec.image,
            "gpuTypeId": offer.offer_id,
            "gpuCount": spec.gpu.count,
            "cloudType": self.cloud_type,
            "containerDiskInGb": spec.disk_gb,
            "volumeInGb": 0,
            "dockerArgs": "",  # the image's ENTRYPOINT runs the spec from env QA_JOB_SPEC
            "env": [{"key": k, "value": v} for k, v in env.items()],
            "startSsh": False,
        }
        if offer.interruptible:
            inp["bidPerGpu"] = offer.bid_price
        return inp

    def _create_one(
        self,
        spec: RenderedSpec,
        env: dict[str, str],
        offer: Offer,
        on_created: Callable[[Instance], None] | None,
    ) -> Instance:
        mutation, root = (
            (M_SPOT, "podRentInterruptable")
            if offer.interruptible
            else (M_ON_DEMAND, "podFindAndDeployOnDemand")
        )
        data = self.gql(mutation, {"input": self.create_input(spec, env, offer)}, create=True)
        pod = data.get(root) or {}
        if not pod.get("id"):
            raise BackendError(f"runpod: {root} returned no pod id")
        inst = Instance(self.name, str(pod["id"]), offer)
        return self._ready_or_destroyed(inst, on_created)

    # -- status / logs / cancel --------------------------------------------------------------------------
    def status(self, instance_id: str) -> Status:
        pod = self.gql(Q_POD, {"input": {"podId": instance_id}}).get("pod")
        if not pod:
            return Status("GONE", "no such pod")
        desired = pod.get("desiredStatus")
        detail = str(pod.get("lastStatusChange") or desired)
        if desired == "RUNNING":
            return Status("RUNNING" if pod.get("runtime") else "PENDING", detail, None, pod)
        if desired == "EXITED":
            return Status("EXITED", detail, None, pod)
        if desired == "TERMINATED":
            return Status("GONE", detail, None, pod)
        return Status("PENDING", detail, None, pod)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        seen = 0
        while True:
            resp = self.http.raw("GET", f"/v2/pods/{instance_id}/logs", params={"tail": tail})
            if resp.status_code != 200:
                raise BackendError(
                    f"runpod: logs of {instance_id}: HTTP {resp.status_code}: {error_message(resp.text)}"
                )
            lines = []
            for raw in resp.text.splitlines():
                if raw.startswith("data:"):
                    try:
                        lines.append(str(json.loads(raw[5:].strip()).get("line", "")))
                    except ValueError:
                        lines.append(raw[5:].strip())
            yield from lines[seen:]
            seen = len(lines)
            if not follow or self.status(instance_id).state not in ("PENDING", "RUNNING"):
                return
            self.sleep(self.poll_s)

    def cancel(self, instance_id: str) -> None:
        try:
            self.gql(M_TERMINATE, {"input": {"podId": instance_id}})
        except BackendError as e:
            if "not found" in str(e).lower():
                return  # already gone = done
            raise
