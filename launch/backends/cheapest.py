"""Ask every cloud for offers meeting the profile and launch on the cheapest (then the next, on failure)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from launch.backends.base import Backend, BackendError, Instance, LaunchFailed, Offer, Status
from launch.gpus import GpuProfile, get_profile
from qa_train.spec import RenderedSpec

logger = logging.getLogger(__name__)


class CheapestBackend(Backend):
    name = "cheapest"

    def __init__(self, backends: dict[str, Backend] | None = None, **kwargs: Any):
        if backends is None:
            from launch.backends.runpod import RunpodBackend
            from launch.backends.vast import VastBackend

            backends = {}
            for cls in (VastBackend, RunpodBackend):
                try:
                    backends[cls.name] = cls(**kwargs)
                except BackendError as e:  # no key for that cloud: skip it, say so
                    logger.warning("cheapest: skipping %s: %s", cls.name, e)
        if not backends:
            raise BackendError("cheapest: no cloud is configured (set VAST_API_KEY and/or RUNPOD_API_KEY)")
        self.backends = backends

    def offers(
        self,
        profile: GpuProfile,
        num_gpus: int,
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        disk_gb: int = 50,
    ) -> list[Offer]:
        out: list[Offer] = []
        for name, b in self.backends.items():
            try:
                out += b.offers(
                    profile, num_gpus, interruptible=interruptible, max_price=max_price, disk_gb=disk_gb
                )
            except BackendError as e:
                logger.warning("cheapest: %s offers failed: %s", name, e)
            except Exception as e:  # one cloud's outage must not hide the other's offers
                logger.warning("cheapest: %s offers failed: %s", name, e)
        out.sort(key=lambda o: o.price_per_hour)
        return out

    def create(
        self,
        spec: RenderedSpec,
        secret_values: dict[str, str],
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        on_created: Any = None,
    ) -> Instance:
        offers = self.offers(
            get_profile(spec.gpu.profile),
            spec.gpu.count,
            interruptible=interruptible,
            max_price=max_price,
            disk_gb=spec.disk_gb,
        )
        if not offers:
            raise LaunchFailed(f"cheapest: no offers on {', '.join(self.backends)}")
        reasons = []
        for name in dict.fromkeys(o.backend for o in offers):  # clouds in order of their cheapest offer
            mine = [o for o in offers if o.backend == name]
            try:
                return self.backends[name].create(
                    spec,
                    secret_values,
                    interruptible=interruptible,
                    max_price=max_price,
                    on_created=on_created,
                    offers=mine,
                )  # type: ignore[call-arg]
            except BackendError as e:
                reasons.append(str(e))
        raise LaunchFailed(" | ".join(reasons))

    def _split(self, instance_id: str) -> tuple[Backend, str]:
        name, _, iid = instance_id.partition(":")
        if name not in self.backends:
            raise BackendError(f"cheapest: instance id {instance_id!r} names no configured cloud")
        return self.backends[name], iid

    def status(self, instance_id: str) -> Status:
        b, iid = self._split(instance_id)
        return b.status(iid)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        b, iid = self._split(instance_id)
        return b.logs(iid, follow=follow, tail=tail)

    def cancel(self, instance_id: str) -> None:
        b, iid = self._split(instance_id)
        b.cancel(iid)
