"""THE offer walk: rent one instance for a job, cheapest offer first, across the chosen clouds.

Why one walk: it existed twice (``cheapest`` and the managed controller) and each copy got a different subset
of the rules. The rules, once:

- offers from every chosen compute, cheapest first, minus the machines that already lost this job (tried
  again only when nothing else is offered);
- per offer one ``Compute.create`` (never re-sent): ``NoCapacity`` → next offer; ``RequestRejected`` → stop
  now with that error (no offer will take a request the cloud refuses); ``AmbiguousCreate`` → look the job's
  instances up with ``find(job_id)``, adopt one, destroy any extra;
- a created instance that shows FAILED, or is not RUNNING by the ready deadline, is destroyed, its machine
  blocklisted, and the walk goes on; one that ends some other way (EXITED, STOPPED, GONE) is handed back as is
  (the controller judges it from the run report: a short job may already be done).

Nothing is left rented when the walk raises: a cancel or Ctrl-C while waiting destroys what it created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from launch.backends.base import (
    AmbiguousCreate,
    CloudError,
    Compute,
    InstanceState,
    InstanceStatus,
    LaunchRequest,
    NoCapacity,
    Offer,
    OfferQuery,
    RequestRejected,
)
from qa_train.contract import ENV_BACKEND

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The job was cancelled while the walk ran; nothing it created is left."""


@dataclass(frozen=True)
class Launched:
    """An instance the walk rented (or adopted) for the job."""

    backend: str
    instance_id: str
    offer: Offer | None = None
    status: InstanceStatus | None = None

    @property
    def machine_id(self) -> str | None:
        mid = (self.offer.extra or {}).get("machine_id") if self.offer else None
        if mid is None and self.status is not None:
            mid = self.status.machine_id
        return None if mid is None else str(mid)

    @property
    def price_per_hour(self) -> float | None:
        return self.offer.price_per_hour if self.offer else None


def offer_keys(backend: str, offer: Offer | None, machine_id: str | None = None) -> set[str]:
    """Blocklist keys: the machine when the cloud names one, and an offer only when it is bound to one machine
    (a vast ask). A RunPod offer is a whole GPU type placed by RunPod: blocking it would block every machine."""
    keys: set[str] = set()
    if offer is not None:
        mid = (offer.extra or {}).get("machine_id")
        if mid is not None:
            keys.add(f"{backend}/offer/{offer.offer_id}")
            keys.add(f"{backend}/machine/{mid}")
    if machine_id is not None:
        keys.add(f"{backend}/machine/{machine_id}")
    return keys


class WalkHooks(Protocol):
    """How the walk tells its caller (the registry, in practice) what happened."""

    def created(self, launched: Launched) -> None:
        """An instance exists (record it now: cost starts, and a restarted controller must find it)."""

    def discarded(self, launched: Launched, reason: str, blocklist: bool) -> None:
        """The walk destroyed it (failed, not ready in time, or cancelled)."""

    def cancelled(self) -> bool:
        """Whether the user cancelled the job meanwhile."""


class NullHooks:
    def created(self, launched: Launched) -> None:
        pass

    def discarded(self, launched: Launched, reason: str, blocklist: bool) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def destroy(
    compute: Compute, instance_id: str, *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Destroy, retrying (a leaked instance bills); raise the last error when it never worked."""
    for attempt in range(attempts):
        try:
            compute.destroy(instance_id)
            return
        except CloudError as e:
            logger.warning("%s: destroy %s (try %d): %s", compute.name, instance_id, attempt + 1, e)
            if attempt + 1 == attempts:
                raise CloudError(
                    f"{compute.name}: could not destroy instance {instance_id}; destroy it by hand: {e}",
                    cloud=compute.name,
                    call="destroy",
                ) from e
            sleep(min(2.0**attempt, 30.0))


class OfferWalk:
    def __init__(
        self,
        computes: dict[str, Compute],
        *,
        ready_timeout_s: float = 1800.0,
        poll_s: float = 5.0,
        hooks: WalkHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.computes = computes
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.hooks: WalkHooks = hooks or NullHooks()
        self.clock = clock
        self.sleep = sleep
        # offers the last ``offers`` call's computes left out (a host below the image's driver floor), with why
        self.skipped: list[str] = []

    # -- offers ----------------------------------------------------------------------------------------------
    def offers(self, query: OfferQuery, blocked: set[str] | frozenset[str] = frozenset()) -> list[Offer]:
        """Every compute's offers, cheapest first, minus blocklisted machines (unless nothing else is offered:
        a blocklist orders, it never strands a job whose only machine is local Docker). A compute that cannot
        list its offers is skipped when another one answers (its error is raised when none does)."""
        found: list[Offer] = []
        errors: list[CloudError] = []
        self.skipped = []
        for name, compute in self.computes.items():
            try:
                found += compute.offers(query)
            except RequestRejected:
                raise
            except CloudError as e:
                logger.warning("%s: offers failed: %s", name, e)
                errors.append(e)
            self.skipped += getattr(compute, "skipped", [])
        if errors and not found:
            raise errors[0]
        ok = [o for o in found if not (offer_keys(o.backend, o) & blocked)]
        if found and not ok:
            logger.warning("only machines that already lost this job are offered; trying them again")
            ok = found
        return sorted(ok, key=lambda o: o.price_per_hour)

    # -- the walk --------------------------------------------------------------------------------------------
    def launch(
        self, request: LaunchRequest, query: OfferQuery, blocked: set[str] | frozenset[str] = frozenset()
    ) -> Launched:
        """Rent one instance for ``request``. Raises NoCapacity (nothing could be rented; the reasons joined),
        RequestRejected, Cancelled, or CloudError (a cloud answer the walk cannot act on)."""
        offers = self.offers(query, blocked)
        if not offers:
            raise NoCapacity(
                f"no offers for {query.num_gpus}x {query.profile.display}"
                + (f" under ${query.max_price}/h" if query.max_price else "")
            )
        reasons: list[str] = []
        for offer in offers:
            if self.hooks.cancelled():
                raise Cancelled()
            compute = self.computes[offer.backend]
            try:
                got = self._create(compute, request, offer)
            except NoCapacity as e:
                reasons.append(f"{offer.backend} offer {offer.offer_id}: {e}")
                continue
            if got is None:  # ambiguous create that made nothing
                reasons.append(f"{offer.backend} offer {offer.offer_id}: create failed, no instance made")
                continue
            ready, why = self._wait_ready(compute, got)
            if ready is not None:
                return ready
            reasons.append(f"{offer.backend} offer {offer.offer_id}: {why}")
        raise NoCapacity(" | ".join(reasons))

    def _create(self, compute: Compute, request: LaunchRequest, offer: Offer | None) -> Launched | None:
        try:  # the container learns which cloud's self-stop to use only here, where the cloud is known
            inst = compute.create(replace(request, env={**request.env, ENV_BACKEND: compute.name}), offer)
        except AmbiguousCreate as e:
            return self._adopt_after(compute, request.name, offer, e)
        except (NoCapacity, RequestRejected):
            raise
        except CloudError as e:  # the compute cleaned up what it made (its contract); this offer did not work
            raise NoCapacity(str(e), cloud=compute.name, call="create") from e
        got = Launched(compute.name, str(inst.instance_id), offer)
        self.hooks.created(got)
        return got

    def _adopt_after(
        self, compute: Compute, name: str, offer: Offer | None, err: AmbiguousCreate
    ) -> Launched | None:
        """An ambiguous create: adopt the instance named ``name`` if one exists; destroy any extra."""
        ids = [str(i) for i in compute.find(name)]
        if not ids:
            logger.warning("%s: ambiguous create (%s) made no instance", compute.name, err)
            return None
        keep = err.instance_id if err.instance_id in ids else ids[0]
        for extra in ids:
            if extra != keep:
                logger.warning("%s: destroying extra instance %s of %s", compute.name, extra, name)
                destroy(compute, extra, sleep=self.sleep)
        got = Launched(compute.name, keep, offer)
        logger.warning("%s: ambiguous create (%s): adopted instance %s", compute.name, err, keep)
        self.hooks.created(got)
        return got

    def _wait_ready(self, compute: Compute, got: Launched) -> tuple[Launched | None, str]:
        """Poll until RUNNING (→ the launch) or until it can never run (→ destroyed, blocklisted, None)."""
        end = self.clock() + self.ready_timeout_s
        last: InstanceStatus | None = None
        try:
            while True:
                if self.hooks.cancelled():
                    self._discard(compute, got, "cancelled by user", blocklist=False)
                    raise Cancelled()
                try:
                    last = compute.status(got.instance_id)
                except CloudError as e:  # an API hiccup while it starts: the deadline still applies
                    logger.warning("%s: status of %s: %s", compute.name, got.instance_id, e)
                    last = None
                if last is not None and last.state == InstanceState.FAILED:
                    why = f"instance {got.instance_id} failed to start: {last.detail}"
                    self._discard(compute, got, why, blocklist=True, status=last)
                    return None, why
                if last is not None and last.state != InstanceState.PROVISIONING:
                    return Launched(got.backend, got.instance_id, got.offer, last), ""
                if self.clock() >= end:
                    detail = (last.detail or last.state) if last else "state unknown"
                    why = (
                        f"instance {got.instance_id} not running after {self.ready_timeout_s:.0f}s ({detail})"
                    )
                    self._discard(compute, got, why, blocklist=True, status=last)
                    return None, why
                self.sleep(self.poll_s)
        except (KeyboardInterrupt, SystemExit):
            self._discard(compute, got, "interrupted while starting", blocklist=False)
            raise

    def _discard(
        self,
        compute: Compute,
        got: Launched,
        reason: str,
        *,
        blocklist: bool,
        status: InstanceStatus | None = None,
    ) -> None:
        destroy(compute, got.instance_id, sleep=self.sleep)
        seen = Launched(got.backend, got.instance_id, got.offer, status or got.status)
        self.hooks.discarded(seen, reason, blocklist)
