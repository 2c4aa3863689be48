"""What every cloud (and local Docker) implements, and the typed states the controller reads.

Each cloud lives in ``launch/backends/<cloud>/``: ``api.py`` is a thin typed client of that cloud's HTTP API and
``compute.py`` implements ``Compute`` below, translating the cloud's raw fields into ``InstanceState`` so the
controller (``launch/jobs/``) never reads a cloud's own words. One create call creates at most one instance and
is never retried; the walk over offers, readiness deadlines and relaunches belong to the controller.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from launch.gpus import GpuProfile

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


def api_key(cloud: str, env_name: str, given: str | None = None) -> str:
    """A cloud's API key: ``given``, else ``env_name`` or ``<env_name>_FILE`` read and checked like every launcher
    secret (a control character is refused by name); none → one CloudError saying what to set."""
    from launch.credentials import load_secrets

    key = given or load_secrets((env_name,)).get(env_name)
    if not key:
        raise CloudError(f"{cloud}: no API key (set {env_name} or {env_name}_FILE)", cloud=cloud)
    return key


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


# -- offers and instances ------------------------------------------------------------------------------------
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
