"""What every cloud (and local Docker) implements, and the typed states the controller reads.

Each cloud lives in ``launch/backends/<cloud>/``: ``api.py`` is a thin typed client of that cloud's HTTP API and
``compute.py`` implements ``Compute`` below, translating the cloud's raw fields into ``InstanceState`` so the
controller (``launch/jobs/``) never reads a cloud's own words. One create call creates at most one instance and
is never retried; the walk over offers, readiness deadlines and relaunches belong to the controller.

Legacy names further down (``Backend``, ``CloudBackend``, ``Status``, ``wait_ready``) go away once every cloud
has moved to ``Compute``.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from launch.gpus import GpuProfile, get_profile
from qa_train.spec import RenderedSpec

logger = logging.getLogger(__name__)


class InstanceState(StrEnum):
    """An instance as the controller sees it, whatever the cloud."""

    PROVISIONING = "PROVISIONING"  # asked for, not running yet (scheduling, pulling the image, loading)
    RUNNING = "RUNNING"  # the container runs
    EXITED = (
        "EXITED"  # the container's main process ended (``exit_code`` when the cloud tells; vast never does)
    )
    STOPPED = "STOPPED"  # stopped: outbid / preempted / host stopped it, or the job stopped itself at its end
    FAILED = "FAILED"  # will never run: provisioning error, vast "unknown" (no heartbeat), offline host
    GONE = "GONE"  # no such instance (destroyed, or never existed)


ACTIVE_STATES = frozenset({InstanceState.PROVISIONING, InstanceState.RUNNING})


@dataclass(frozen=True)
class InstanceStatus:
    state: InstanceState
    detail: str = ""  # the cloud's own words, for people (status_msg, desiredStatus, …)
    exit_code: int | None = None
    machine_id: str | None = None


@dataclass(frozen=True)
class OfferQuery:
    """What a job needs from a host. ``min_cuda``: the image's CUDA version (its ``qa-expert.cuda`` label)."""

    profile: GpuProfile
    num_gpus: int
    interruptible: bool = False
    max_price: float | None = None
    disk_gb: int = 50
    min_cuda: str | None = None
    min_ram_gb: int = 0
    min_vcpus: int = 0


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials of a private image registry (from REGISTRY_USERNAME / REGISTRY_PASSWORD; never stored)."""

    registry: str
    username: str
    password: str


@dataclass(frozen=True)
class LaunchRequest:
    """One instance to create. ``name`` (the job id) labels it (vast ``label``, RunPod pod name, Docker label)
    so an ambiguous create can be looked up with ``Compute.find``. ``env`` is the container's whole environment:
    short references and secrets only; each compute checks its cloud's limits before sending."""

    name: str
    image: str
    env: dict[str, str]
    disk_gb: int
    gpu_count: int = 1
    interruptible: bool = False
    registry_auth: RegistryAuth | None = None
    min_cuda: str | None = None
    min_ram_gb: int = 0
    min_vcpus: int = 0


class CloudError(RuntimeError):
    """A cloud call failed; the message names the cloud, the call and the HTTP status."""

    def __init__(self, message: str, *, cloud: str = "", call: str = "", status: int = 0, body: Any = None):
        super().__init__(message)
        self.cloud = cloud
        self.call = call
        self.status = status
        self.body = body


class NoCapacity(CloudError):
    """This offer is gone or cannot be rented now: try the next one."""


class RequestRejected(CloudError):
    """The cloud refused the request itself (vast 400 invalid_args, bad key, over a limit): no offer will do."""


class AmbiguousCreate(CloudError):
    """A create whose outcome is unknown (timeout, connection reset, 5xx): an instance may exist.

    ``instance_id`` is set when the answer named one. Never re-send the create: look it up with ``find(name)``."""

    def __init__(self, message: str, *, instance_id: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.instance_id = instance_id


class Compute(ABC):
    """One cloud's instances. Implementations: ``launch/backends/{local,vast,runpod}/compute.py``."""

    name: str = "base"

    @abstractmethod
    def offers(self, query: OfferQuery) -> list[Offer]:
        """Offers meeting the query, cheapest first (``Offer.backend`` is this compute's name)."""

    @abstractmethod
    def create(self, request: LaunchRequest, offer: Offer | None) -> Instance:
        """Create one instance on ``offer`` (None for local Docker); returns as soon as it exists (no wait).

        Raises NoCapacity, RequestRejected, AmbiguousCreate, or CloudError. A create that made an instance and
        then failed (vast's spot trap) destroys it before raising."""

    @abstractmethod
    def status(self, instance_id: str) -> InstanceStatus: ...

    @abstractmethod
    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        """The container's log lines; with ``follow`` every new line exactly once until the instance ends."""

    @abstractmethod
    def stop(self, instance_id: str) -> None:
        """Stop (billing for the GPU ends; disk may still bill)."""

    @abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Destroy; an instance already gone counts as done. Raises CloudError when the cloud says it was not."""

    @abstractmethod
    def find(self, name: str) -> list[str]:
        """Ids of the instances carrying ``name`` (the job id), for adopting or destroying after an ambiguous
        create or a controller restart."""


# -- legacy interface (removed once every cloud implements Compute) ------------------------------------------
STATES = ("PENDING", "RUNNING", "EXITED", "STOPPED", "FAILED", "GONE")


BackendError = CloudError  # legacy name


class LaunchFailed(CloudError):
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
