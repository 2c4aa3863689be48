"""The small interface every backend implements: offers / create / status / logs / cancel.

States are normalised so the launcher (and the managed-jobs controller) need not know each cloud's words:
PENDING (asked for, not up yet), RUNNING, EXITED (container ended; ``exit_code`` when the cloud says),
STOPPED (stopped/preempted while we did not ask), FAILED (provisioning error), GONE (no such instance).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from launch.gpus import GpuProfile, get_profile
from qa_train.spec import RenderedSpec

logger = logging.getLogger(__name__)

STATES = ("PENDING", "RUNNING", "EXITED", "STOPPED", "FAILED", "GONE")


class BackendError(RuntimeError):
    """A backend operation failed in a way the user must see (message names the cloud and the reason)."""


class NoCapacity(BackendError):
    """This offer is gone or cannot be rented: try the next one."""


class LaunchFailed(BackendError):
    """Every offer tried failed; anything created was destroyed."""


@dataclass
class Offer:
    backend: str
    offer_id: str
    gpu_name: str
    num_gpus: int
    price_per_hour: float  # $/h for the whole instance
    interruptible: bool = False
    reliability: float | None = None
    bid_price: float | None = None  # $/h total to bid (interruptible)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Instance:
    backend: str
    instance_id: str
    offer: Offer | None = None


@dataclass
class Status:
    state: str
    detail: str = ""
    exit_code: int | None = None
    raw: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}")


def container_env(spec: RenderedSpec, secret_values: dict[str, str]) -> dict[str, str]:
    """The container's whole environment: non-secret env, the rendered spec, secrets (only ever as env)."""
    env = dict(spec.env)
    env["QA_JOB_SPEC"] = json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))
    env.update(secret_values)
    return env


class Backend(ABC):
    name: str = "base"

    @abstractmethod
    def offers(
        self,
        profile: GpuProfile,
        num_gpus: int,
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        disk_gb: int = 50,
    ) -> list[Offer]:
        """Offers meeting the profile, cheapest first."""

    @abstractmethod
    def create(
        self,
        spec: RenderedSpec,
        secret_values: dict[str, str],
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        on_created: Callable[[Instance], None] | None = None,
    ) -> Instance:
        """Start the spec; return once it runs (or raise, after destroying anything it created).

        ``on_created`` is called as soon as an instance exists so the caller can record it in the registry.
        """

    @abstractmethod
    def status(self, instance_id: str) -> Status: ...

    @abstractmethod
    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]: ...

    @abstractmethod
    def cancel(self, instance_id: str) -> None:
        """Stop and remove/destroy; an instance that is already gone counts as done."""


def wait_ready(
    backend: Backend,
    instance_id: str,
    *,
    deadline_s: float,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Status:
    """Poll until RUNNING (or EXITED with code 0: a job that already finished); raise BackendError otherwise."""
    end = clock() + deadline_s
    last = Status("PENDING")
    while True:
        last = backend.status(instance_id)
        if last.state == "RUNNING" or (last.state == "EXITED" and last.exit_code == 0):
            return last
        if last.state in ("EXITED", "STOPPED", "FAILED", "GONE"):
            raise BackendError(
                f"{backend.name}: instance {instance_id} {last.state.lower()} before running: {last.detail}"
            )
        if clock() >= end:
            raise BackendError(
                f"{backend.name}: instance {instance_id} not running after {deadline_s:.0f}s (last: {last.detail or last.state})"
            )
        sleep(poll_s)


class CloudBackend(Backend):
    """A rented-GPU cloud (vast.ai, RunPod): offers are tried cheapest first, and an instance that does not come
    up is destroyed before the error leaves ``create`` (no leaked billing)."""

    max_offers: int | None = None  # offers tried per create (None: all)
    max_failed_launches: int = 2  # launches that failed after an instance existed, before giving up
    ready_timeout_s: float
    poll_s: float
    sleep: Callable[[float], None]

    def create(
        self,
        spec: RenderedSpec,
        secret_values: dict[str, str],
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        on_created: Callable[[Instance], None] | None = None,
        offers: list[Offer] | None = None,
    ) -> Instance:
        """No capacity on an offer → the next one; a failed launch counts towards ``max_failed_launches``."""
        profile = get_profile(spec.gpu.profile)
        if offers is None:
            offers = self.offers(profile, spec.gpu.count, interruptible=interruptible, max_price=max_price,
                                 disk_gb=spec.disk_gb)  # fmt: skip
        if not offers:
            raise LaunchFailed(
                f"{self.name}: no offers for {spec.gpu.count}x {profile.display}"
                + (f" under ${max_price}/h" if max_price else "")
            )
        env = container_env(spec, secret_values)
        reasons: list[str] = []
        failed = 0
        for offer in offers[: self.max_offers]:
            try:
                return self._create_one(spec, env, offer, on_created)
            except NoCapacity as e:
                reasons.append(f"offer {offer.offer_id}: {e}")
            except BackendError as e:
                reasons.append(f"offer {offer.offer_id}: {e}")
                failed += 1
                if failed >= self.max_failed_launches:
                    break
        raise LaunchFailed(f"{self.name}: launch failed; nothing left running. " + " | ".join(reasons))

    @abstractmethod
    def _create_one(
        self,
        spec: RenderedSpec,
        env: dict[str, str],
        offer: Offer,
        on_created: Callable[[Instance], None] | None,
    ) -> Instance:
        """Create on one offer and return ``self._ready_or_destroyed(instance, on_created)``."""

    def _ready_or_destroyed(self, inst: Instance, on_created: Callable[[Instance], None] | None) -> Instance:
        """Record the instance, wait until it runs; on any failure (Ctrl-C included) destroy it, then re-raise."""
        from launch.backends.transport import ApiError

        try:
            if on_created:
                on_created(inst)
            wait_ready(
                self, inst.instance_id, deadline_s=self.ready_timeout_s, poll_s=self.poll_s, sleep=self.sleep
            )
        except BaseException as e:
            logger.warning(
                "%s: instance %s failed to start (%s); destroying it", self.name, inst.instance_id, e
            )
            try:
                self.cancel(inst.instance_id)
            except Exception as ce:  # report both; the original error matters most
                logger.error("%s: destroy of %s failed too: %s", self.name, inst.instance_id, ce)
            if isinstance(e, BackendError | ApiError):
                raise BackendError(str(e)) from e
            raise
        return inst
