"""The managed-job controller, its policy, the offer walk, states and lease, on an in-memory compute double.

No HTTP, no threads, no S3: a fake clock whose ``sleep`` advances time and fires the test's scripted events
(preempt an instance, cancel the job, write the run report). Each test runs in milliseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launch.backends.base import (
    AmbiguousCreate,
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
from launch.gpus import get_profile
from launch.jobs.controller import Controller
from launch.jobs.lease import Lease, LeaseHeld
from launch.jobs.offers import OfferWalk
from launch.jobs.recovery import Action, Observation, RecoveryPolicy
from launch.jobs.state import InvalidTransition, JobState, Registry, allowed
from qa_train.contract import RunReport, RunState, StageResult

JOB = "job-1"


class Clock:
    """Fake time: ``sleep`` advances it and runs every scripted event that falls due."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self.events: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.t

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        self.events.append((self.t + delay, fn))

    def sleep(self, s: float) -> None:
        assert len(self.sleeps) < 5000, "the controller loops without end"
        self.sleeps.append(s)
        self.t += s
        due = [e for e in self.events if e[0] <= self.t]
        self.events = [e for e in self.events if e[0] > self.t]
        for _, fn in due:
            fn()


@dataclass
class Box:
    name: str
    state: InstanceState
    machine: str
    exit_code: int | None = None
    provisioning_polls: int = 0


@dataclass
class FakeCompute(Compute):
    """A cloud in memory. ``plan`` scripts what each create does: an exception to raise, "ambiguous" (create,
    then raise AmbiguousCreate), "fail-start" (an instance that shows FAILED), "never-ready" (one that stays PROVISIONING), "ambiguous-none" (raise, nothing made), "ambiguous-two" (two made)."""

    name: str = "fake"
    market: list[Offer] = field(default_factory=list)
    plan: list[object] = field(default_factory=list)
    boxes: dict[str, Box] = field(default_factory=dict)
    creates: list[str] = field(default_factory=list)  # offer ids, in order
    destroyed: list[str] = field(default_factory=list)
    provisioning_polls: int = 0  # polls each new instance spends PROVISIONING
    start_state: InstanceState = InstanceState.RUNNING
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def offers(self, query: OfferQuery) -> list[Offer]:
        return sorted(self.market, key=lambda o: o.price_per_hour)

    def _make(self, request: LaunchRequest, offer: Offer | None) -> str:
        iid = f"{self.name}-i{next(self._ids)}"
        machine = str((offer.extra or {}).get("machine_id")) if offer else "local"
        self.boxes[iid] = Box(
            request.name, self.start_state, machine, provisioning_polls=self.provisioning_polls
        )
        return iid

    def create(self, request: LaunchRequest, offer: Offer | None) -> Instance:
        self.creates.append(offer.offer_id if offer else "-")
        step = self.plan.pop(0) if self.plan else None
        if isinstance(step, Exception):
            raise step
        if step == "ambiguous":
            iid = self._make(request, offer)
            raise AmbiguousCreate("read timeout", cloud=self.name, call="create")
        if step == "never-ready":
            iid = self._make(request, offer)
            self.boxes[iid].provisioning_polls = 10**9
            return Instance(self.name, iid, offer)
        if step == "fail-start":
            iid = self._make(request, offer)
            self.boxes[iid].state = InstanceState.FAILED
            return Instance(self.name, iid, offer)
        if step == "ambiguous-none":
            raise AmbiguousCreate("connection reset", cloud=self.name, call="create")
        if step == "ambiguous-two":
            self._make(request, offer)
            iid = self._make(request, offer)
            raise AmbiguousCreate("gateway timeout", cloud=self.name, call="create", instance_id=iid)
        return Instance(self.name, self._make(request, offer), offer)

    def status(self, instance_id: str) -> InstanceStatus:
        b = self.boxes.get(instance_id)
        if b is None:
            return InstanceStatus(InstanceState.GONE)
        if b.provisioning_polls > 0:
            b.provisioning_polls -= 1
            return InstanceStatus(InstanceState.PROVISIONING, "loading", machine_id=b.machine)
        return InstanceStatus(b.state, str(b.state).lower(), exit_code=b.exit_code, machine_id=b.machine)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        return iter([f"log of {instance_id}"])

    def stop(self, instance_id: str) -> None:
        self.boxes[instance_id].state = InstanceState.STOPPED

    def destroy(self, instance_id: str) -> None:
        if self.boxes.pop(instance_id, None) is not None:
            self.destroyed.append(instance_id)

    def find(self, name: str) -> list[str]:
        return [i for i, b in self.boxes.items() if b.name == name]

    # test controls
    def live(self) -> list[str]:
        return list(self.boxes)

    def set(self, iid: str, state: InstanceState, exit_code: int | None = None) -> None:
        self.boxes[iid].state = state
        self.boxes[iid].exit_code = exit_code


class Reports:
    """The run report as the container would keep it; ``reads`` counts reads (the controller's polls)."""

    def __init__(self) -> None:
        self.report: RunReport | None = None
        self.reads = 0
        self.on_read: Callable[[int], None] | None = None

    def read_report(self) -> RunReport | None:
        self.reads += 1
        if self.on_read:
            self.on_read(self.reads)
        return self.report

    def running(self, step: int | None = None) -> None:
        self.report = RunReport("run", last_committed_step=step)

    def succeeded(self) -> None:
        self.report = RunReport("run", RunState.SUCCEEDED, [StageResult("train", 0), StageResult("eval", 0)])

    def failed(self, stage: str = "train", code: int = 1) -> None:
        self.report = RunReport("run", RunState.FAILED, [StageResult(stage, code)], error="loss is NaN")


def offer(n: int, price: float, machine: int | None = None, backend: str = "fake") -> Offer:
    return Offer(backend, f"o{n}", "RTX A6000", 1, price, extra={"machine_id": machine or 500 + n})


@dataclass
class World:
    clock: Clock
    reg: Registry
    cloud: FakeCompute
    reports: Reports
    echoed: list[str]
    policy: RecoveryPolicy
    computes: dict[str, Compute]
    no_reports: bool = False

    def controller(self, **kw) -> Controller:
        profile = get_profile("a6000")
        args = dict(
            computes=self.computes,
            request=LaunchRequest(name=JOB, image="img", env={}, disk_gb=10),
            query=OfferQuery(profile=profile, num_gpus=1),
            policy=self.policy,
            reports=None if self.no_reports else self.reports,
            poll_s=10.0,
            clock=self.clock,
            sleep=self.clock.sleep,
            echo=self.echoed.append,
            artifacts=lambda: ["artifacts listed"],
        )
        args.update(kw)
        return Controller(self.reg, JOB, **args)

    def states(self) -> list[JobState]:
        return [e.state for e in self.reg.events(JOB)]

    def cancel(self) -> None:
        self.reg.transition(JOB, JobState.CANCELLED, "cancelled by user")


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = Clock()
    reg = Registry(tmp_path / "runs", redact=lambda v: v, clock=clock)
    reg.claim(JOB, "fake", gpu="a6000", run_name="run", managed=True)
    cloud = FakeCompute(market=[offer(1, 0.40), offer(2, 0.50), offer(3, 0.60)])
    policy = RecoveryPolicy(max_restarts=3, backoff_s=1.0, backoff_max_s=8.0, capacity_wait_s=60.0,
                            ready_timeout_s=120.0)  # fmt: skip
    return World(clock, reg, cloud, Reports(), [], policy, {"fake": cloud})


# -- the controller ----------------------------------------------------------------------------------------
def test_preempted_instance_is_relaunched_on_another_machine_and_succeeds(world):
    w = world
    w.reports.running()
    w.clock.at(25, lambda: (w.reports.running(step=3), w.cloud.set("fake-i1", InstanceState.STOPPED)))
    w.clock.at(60, lambda: w.reports.succeeded())
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1", "o2"]  # the preempted machine (o1) is not rented again
    assert w.cloud.live() == [] and w.cloud.destroyed == ["fake-i1", "fake-i2"]
    assert w.states() == [JobState.PENDING, JobState.STARTING, JobState.RUNNING, JobState.RECOVERING,
                          JobState.RUNNING, JobState.SUCCEEDED]  # fmt: skip
    row = w.reg.get(JOB)
    assert row.restarts == 1 and row.last_step == 3
    assert "preempted" in w.reg.events(JOB)[3].reason
    assert {"fake/machine/501", "fake/offer/o1"} <= w.reg.blocked(JOB)
    launches = w.reg.launches(JOB)
    assert [x.instance_id for x in launches] == ["fake-i1", "fake-i2"] and all(not x.open for x in launches)
    assert "artifacts listed" in w.echoed


def test_no_capacity_backs_off_exponentially_up_to_the_cap_then_gives_up(world):
    w = world
    w.cloud.market = []
    assert w.controller().run() == JobState.FAILED
    # 1, 2, 4, 8, 8, 8, ... until the next wait would pass the 60 s capacity wait
    assert w.clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert sum(w.clock.sleeps) + 8.0 > 60.0 >= sum(w.clock.sleeps)
    assert "no capacity after 55s" in w.reg.last_reason(JOB)
    assert w.cloud.creates == []


def test_capacity_that_comes_back_is_used_and_the_backoff_restarts(world):
    w = world
    market = w.cloud.market
    w.cloud.market = []
    w.clock.at(5, lambda: setattr(w.cloud, "market", market))
    w.clock.at(40, lambda: w.reports.succeeded())
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.clock.sleeps[:3] == [1.0, 2.0, 4.0] and w.cloud.creates == ["o1"]


def test_training_error_from_the_report_fails_and_is_never_relaunched(world):
    w = world
    w.clock.at(15, lambda: (w.reports.failed("train", 1), w.cloud.set("fake-i1", InstanceState.EXITED)))
    assert w.controller().run() == JobState.FAILED
    reason = w.reg.last_reason(JOB)
    assert "training error" in reason and "stage 'train' failed (exit 1)" in reason and "NaN" in reason
    assert w.cloud.creates == ["o1"] and w.cloud.live() == []
    assert w.reg.get(JOB).restarts == 0


def test_cancel_during_recovery_backoff_stops_with_nothing_left(world):
    w = world

    def lose() -> None:
        w.cloud.set("fake-i1", InstanceState.GONE)
        w.cloud.market = []  # no capacity for the relaunch: the controller backs off

    w.clock.at(15, lose)
    w.clock.at(40, w.cancel)
    assert w.controller().run() == JobState.CANCELLED
    assert w.states()[-2:] == [JobState.RECOVERING, JobState.CANCELLED]
    assert w.cloud.creates == ["o1"] and w.cloud.live() == []


def test_cancel_while_running_destroys_the_instance(world):
    w = world
    w.clock.at(15, w.cancel)
    assert w.controller().run() == JobState.CANCELLED
    assert w.cloud.live() == [] and w.reg.open_launches(JOB) == []


def test_restarted_controller_adopts_the_live_instance_without_a_second_create(world):
    w = world

    def killed() -> None:  # the first controller dies here (as with kill -9: its lease stays behind)
        raise KeyboardInterrupt

    w.clock.at(15, killed)
    with pytest.raises(KeyboardInterrupt):
        w.controller(
            lease=Lease(w.reg, JOB, clock=w.clock, pid=999_999, host="here", alive=lambda p: False)
        ).run()
    w.reg.swap_lease(JOB, (None, None), (999_999, "here"))  # a dead controller's lease
    assert w.cloud.creates == ["o1"] and w.reg.get(JOB).state == JobState.RUNNING
    w.clock.at(30, w.reports.succeeded)
    ctl = w.controller(lease=Lease(w.reg, JOB, clock=w.clock, pid=1, host="here", alive=lambda p: False))
    assert ctl.run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1"]  # adopted, never created twice
    assert any("re-attached to fake instance fake-i1" in s for s in w.echoed)


def test_restarted_controller_adopts_an_unrecorded_instance_labelled_with_the_job(world):
    w = world
    w.cloud._make(
        LaunchRequest(name=JOB, image="img", env={}, disk_gb=10), offer(1, 0.4)
    )  # made, never recorded
    w.clock.at(15, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == [] and w.cloud.destroyed == ["fake-i1"]


def test_ambiguous_create_is_adopted_via_find(world):
    w = world
    w.cloud.plan = ["ambiguous"]
    w.clock.at(15, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1"] and [x.instance_id for x in w.reg.launches(JOB)] == ["fake-i1"]


def test_ambiguous_create_with_two_instances_keeps_the_named_one_and_destroys_the_extra(world):
    w = world
    w.cloud.plan = ["ambiguous-two"]
    w.clock.at(15, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert [x.instance_id for x in w.reg.launches(JOB)] == ["fake-i2"]
    assert w.cloud.destroyed == ["fake-i1", "fake-i2"] and w.cloud.creates == ["o1"]


def test_ambiguous_create_that_made_nothing_walks_on(world):
    w = world
    w.cloud.plan = ["ambiguous-none"]
    w.clock.at(15, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1", "o2"]


def test_request_rejected_stops_the_walk_at_once(world):
    w = world
    w.cloud.plan = [RequestRejected("400 invalid_args: env value over 256 characters", cloud="fake")]
    assert w.controller().run() == JobState.FAILED
    assert w.cloud.creates == ["o1"]  # never walked on to o2 / o3
    assert "refused the request" in w.reg.last_reason(JOB) and "invalid_args" in w.reg.last_reason(JOB)
    assert w.clock.sleeps == []


def test_no_capacity_on_one_offer_walks_to_the_next(world):
    w = world
    w.cloud.plan = [NoCapacity("gone", cloud="fake")]
    w.clock.at(15, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1", "o2"]


def test_budget_stop(world):
    w = world
    w.cloud.market = [offer(1, 36.0)]  # $0.01 per second: $0.10 per 10 s poll
    w.policy = RecoveryPolicy(max_cost_usd=0.5)
    assert w.controller().run() == JobState.STOPPED_BUDGET
    assert "max_cost $0.50 reached" in w.reg.last_reason(JOB)
    assert 0.5 <= w.reg.cost(JOB) <= 0.61  # the fake's stop ends the instance at once: no wait
    assert w.cloud.live() == []


def test_final_report_while_the_instance_still_runs_destroys_it(world):
    w = world
    w.clock.at(15, w.reports.succeeded)  # the container said so, but its self-stop did not happen
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.destroyed == ["fake-i1"] and w.cloud.live() == []


def test_report_written_just_after_the_exit_is_read_again_before_relaunching(world):
    w = world
    w.clock.at(15, lambda: w.cloud.set("fake-i1", InstanceState.EXITED))
    exited_reads: list[int] = []

    def on_read(n: int) -> None:  # the run's last write lands between the two reads after the exit
        box = w.cloud.boxes.get("fake-i1")
        if box is not None and box.state == InstanceState.EXITED:
            exited_reads.append(n)
            if len(exited_reads) == 2:
                w.reports.succeeded()

    w.reports.on_read = on_read
    assert w.controller().run() == JobState.SUCCEEDED
    assert len(exited_reads) == 2 and w.cloud.creates == ["o1"] and w.reg.get(JOB).restarts == 0


def test_instance_that_never_runs_is_destroyed_blocklisted_and_the_next_offer_tried(world):
    w = world
    w.cloud.plan = ["never-ready"]  # the first instance never leaves PROVISIONING
    w.clock.at(200, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1", "o2"]
    assert "fake/machine/501" in w.reg.blocked(JOB)
    assert "not running after 120s" in w.reg.launches(JOB)[0].end_reason


def test_instance_that_fails_to_start_is_destroyed_and_the_next_offer_tried(world):
    w = world
    w.cloud.plan = ["fail-start"]
    w.clock.at(30, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.cloud.creates == ["o1", "o2"] and "fake/machine/501" in w.reg.blocked(JOB)
    assert w.reg.launches(JOB)[0].end_reason.startswith("instance fake-i1 failed to start")


def test_max_restarts_reached_fails_and_leaks_nothing(world):
    w = world
    w.policy = RecoveryPolicy(max_restarts=1, backoff_s=1.0, ready_timeout_s=60.0)
    w.clock.at(15, lambda: w.cloud.set("fake-i1", InstanceState.STOPPED))
    w.clock.at(45, lambda: w.cloud.set("fake-i2", InstanceState.STOPPED))
    assert w.controller().run() == JobState.FAILED
    assert "max_restarts (1) reached" in w.reg.last_reason(JOB)
    assert w.cloud.live() == [] and len(w.cloud.creates) == 2


def test_cloud_outage_is_not_a_preemption(world):
    w = world
    calls = {"n": 0}
    real = w.cloud.status

    def flaky(iid: str) -> InstanceStatus:
        calls["n"] += 1
        if 2 <= calls["n"] <= 5:
            from launch.backends.base import CloudError

            raise CloudError("502 bad gateway", cloud="fake", call="status", status=502)
        return real(iid)

    w.cloud.status = flaky  # type: ignore[method-assign]
    w.clock.at(80, w.reports.succeeded)
    assert w.controller().run() == JobState.SUCCEEDED
    assert w.reg.get(JOB).restarts == 0 and w.cloud.creates == ["o1"]


@pytest.mark.parametrize(
    ("code", "state", "restarts"),
    [(0, JobState.SUCCEEDED, 0), (137, JobState.SUCCEEDED, 1), (2, JobState.FAILED, 0)],
)
def test_local_job_without_object_storage_is_judged_by_its_exit_code(world, code, state, restarts):
    w = world
    w.no_reports = True
    local = FakeCompute(name="local", market=[Offer("local", "local", "cpu", 0, 0.0)])
    w.computes = {"local": local}
    w.clock.at(15, lambda: local.set("local-i1", InstanceState.EXITED, code))
    w.clock.at(45, lambda: local.boxes and local.set(local.live()[-1], InstanceState.EXITED, 0))
    assert w.controller().run() == state
    assert w.reg.get(JOB).restarts == restarts and local.live() == []
    if code == 137:  # the only machine lost the job, and is still used: a blocklist never strands a job
        assert local.creates == ["local", "local"]


def test_a_second_live_controller_is_refused(world):
    w = world
    w.reg.swap_lease(JOB, (None, None), (4242, "here"))
    with pytest.raises(LeaseHeld, match="pid 4242"):
        w.controller(lease=Lease(w.reg, JOB, clock=w.clock, pid=1, host="here", alive=lambda p: True)).run()
    w.reg.set(JOB, controller_host="elsewhere", heartbeat_at=w.clock())
    with pytest.raises(LeaseHeld, match="elsewhere"):
        Lease(w.reg, JOB, clock=w.clock, pid=1, host="here").acquire()
    w.clock.t += 120  # a stale heartbeat from another host: taken over
    Lease(w.reg, JOB, clock=w.clock, pid=1, host="here").acquire()
    assert w.reg.get(JOB).controller_pid == 1


def test_a_finished_job_is_not_touched(world):
    w = world
    w.cancel()
    assert w.controller().run() == JobState.CANCELLED
    assert w.cloud.creates == []


# -- states, policy, walk ----------------------------------------------------------------------------------
def test_transitions_are_checked_and_cancel_wins(world):
    w = world
    assert allowed(JobState.PENDING, JobState.STARTING) and not allowed(JobState.PENDING, JobState.RECOVERING)
    assert not allowed(JobState.SUCCEEDED, JobState.RUNNING)
    with pytest.raises(InvalidTransition):
        w.reg.transition(JOB, JobState.RECOVERING)
    assert w.reg.transition(JOB, JobState.STARTING, "go")
    w.cancel()
    assert w.reg.transition(JOB, JobState.RUNNING, "late") is False  # ended: nothing changes
    assert w.reg.get(JOB).state == JobState.CANCELLED


def test_policy_decisions():
    p = RecoveryPolicy(max_restarts=2, max_cost_usd=10.0, ready_timeout_s=100.0)
    running = InstanceStatus(InstanceState.RUNNING)
    stopped = InstanceStatus(InstanceState.STOPPED)
    ok = RunReport("r", RunState.SUCCEEDED)
    assert p.decide(Observation(running)).action == Action.POLL
    assert p.decide(Observation(None)).action == Action.POLL
    assert p.decide(Observation(running, report=ok)).action == Action.SUCCEED
    assert p.decide(Observation(stopped, report=ok)).action == Action.SUCCEED
    assert p.decide(Observation(stopped)).action == Action.RELAUNCH
    assert p.decide(Observation(stopped, restarts=2)).action == Action.FAIL
    assert p.decide(Observation(stopped, report_known=False)).action == Action.POLL
    assert p.decide(Observation(running, spent_usd=10.5)).action == Action.STOP_BUDGET
    assert p.decide(Observation(running, spent_usd=10.0)).action == Action.STOP_BUDGET  # at the cap
    assert p.decide(Observation(running, spent_usd=9.99)).action == Action.POLL
    assert not p.near_budget(7.99) and p.near_budget(8.0) and not p.near_budget(10.0)
    assert p.decide(Observation(running, cancelled=True, report=ok)).action == Action.CANCEL
    prov = InstanceStatus(InstanceState.PROVISIONING)
    assert p.decide(Observation(prov, provisioning_s=50)).action == Action.POLL
    assert p.decide(Observation(prov, provisioning_s=150)).action == Action.RELAUNCH
    assert [p.backoff(i) for i in range(3)] == [30.0, 60.0, 120.0] and p.backoff(10) == 600.0
    assert p.on_no_capacity(0, 6 * 3600.0, "x").action == Action.FAIL


def test_the_walk_skips_blocklisted_machines_across_clouds():
    a = FakeCompute(name="a", market=[offer(1, 0.4, backend="a"), offer(2, 0.7, backend="a")])
    b = FakeCompute(name="b", market=[offer(3, 0.5, backend="b")])
    walk = OfferWalk({"a": a, "b": b})
    q = OfferQuery(profile=get_profile("a6000"), num_gpus=1)
    assert [o.offer_id for o in walk.offers(q)] == ["o1", "o3", "o2"]
    assert [o.offer_id for o in walk.offers(q, {"a/machine/501"})] == ["o3", "o2"]
    got = walk.launch(LaunchRequest(name=JOB, image="i", env={}, disk_gb=1), q, {"a/offer/o1"})
    assert (got.backend, got.offer.offer_id) == ("b", "o3") and a.creates == []


def test_registry_redacts_every_reason_it_stores(tmp_path):
    secret = "vast-secret-key-0123456789"
    reg = Registry(tmp_path / "runs", redact=lambda v: v.replace(secret, "***"))
    reg.claim("j", "vast", reason=f"submitted with {secret}")
    reg.transition("j", JobState.STARTING, f"401 for key {secret}")
    reg.add_launch("j", backend="vast", instance_id="1")
    reg.end_launch("j", "1", f"destroyed: {secret}")
    reg.block("j", {"vast/machine/1"}, f"failed: {secret}")
    assert secret.encode() not in (tmp_path / "runs" / "registry.sqlite").read_bytes()
    assert reg.events("j")[-1].reason == "401 for key ***"


def test_the_walk_tells_the_container_which_cloud_it_landed_on(world):
    w = world
    seen: list[dict] = []
    real = w.cloud.create
    w.cloud.create = lambda req, off: (seen.append(req.env), real(req, off))[1]  # type: ignore[method-assign]
    w.clock.at(15, w.reports.succeeded)
    w.controller().run()
    assert seen and seen[0]["QA_BACKEND"] == "fake"


# -- --max_cost ------------------------------------------------------------------------------------------
def test_max_cost_warns_once_at_80_percent_then_stops_waits_for_the_checkpoint_and_destroys(world):
    w = world
    w.cloud.market = [offer(1, 36.0)]  # $0.01 per second
    w.policy = RecoveryPolicy(max_cost_usd=1.0)
    w.reports.running(step=20)
    stops: list[tuple[float, str]] = []

    def stop(iid: str) -> None:  # SIGTERM: the trainer commits step 30 after 12 s, the container ends at 40 s
        stops.append((w.clock(), iid))
        w.clock.at(12, lambda: w.reports.running(step=30))
        w.clock.at(40, lambda: w.cloud.boxes and w.cloud.set(iid, InstanceState.STOPPED))

    w.cloud.stop = stop  # type: ignore[method-assign]
    assert w.controller(stop_wait_s=120.0).run() == JobState.STOPPED_BUDGET
    warnings = [e for e in w.reg.events(JOB) if e.reason.startswith("budget warning")]
    assert len(warnings) == 1 and "of max_cost $1.00 (80%)" in warnings[0].reason
    assert warnings[0].state == JobState.RUNNING  # an event, not a state change
    assert sum("budget warning" in s for s in w.echoed) == 1
    assert len(stops) == 1 and stops[0][1] == "fake-i1"
    assert 1.0 <= w.reg.cost(JOB) < 1.2  # destroyed once step 30 was committed, not after the whole wait
    assert w.cloud.destroyed == ["fake-i1"] and w.cloud.live() == [] and w.reg.open_launches(JOB) == []
    reason = w.reg.last_reason(JOB)
    assert "max_cost $1.00 reached" in reason and "last committed checkpoint: step 30" in reason
    assert w.reg.get(JOB).last_step == 30 and w.reg.get(JOB).state.terminal
    assert w.states()[-1] == JobState.STOPPED_BUDGET and w.cloud.creates == ["o1"]


def test_max_cost_stop_wait_is_bounded_when_no_checkpoint_comes(world):
    w = world
    w.cloud.market = [offer(1, 36.0)]
    w.policy = RecoveryPolicy(max_cost_usd=0.5)
    w.reports.running(step=5)
    w.cloud.stop = lambda iid: None  # type: ignore[method-assign]  # a container that never reacts
    assert w.controller(stop_wait_s=60.0).run() == JobState.STOPPED_BUDGET
    stop_at = next(e.ts for e in w.reg.events(JOB) if e.state == JobState.STOPPED_BUDGET)
    started = w.reg.launches(JOB)[0].started_at
    assert 60.0 <= stop_at - started - 50.0 <= 70.0, stop_at - started  # 50 s to the cap, then the wait
    assert "last committed checkpoint: step 5" in w.reg.last_reason(JOB) and w.cloud.live() == []


def test_max_cost_reached_while_recovering_ends_at_once(world):
    w = world
    w.policy = RecoveryPolicy(max_cost_usd=0.5)
    w.reg.transition(JOB, JobState.STARTING, "go")
    w.reg.add_launch(JOB, backend="fake", instance_id="gone-1", price_per_hour=36.0)
    w.clock.t += 60  # $0.60 spent by a launch that was lost; a restarted controller finds no instance
    w.reg.end_launch(JOB, "gone-1", "preempted")
    w.reg.transition(JOB, JobState.RECOVERING, "preempted")
    w.reports.running(step=7)
    assert w.controller().run() == JobState.STOPPED_BUDGET
    assert w.cloud.creates == [] and w.clock.sleeps == []
    reason = w.reg.last_reason(JOB)
    assert "no instance was running" in reason and "step 7" in reason


def test_max_cost_option_survives_the_rename(tmp_path):
    from launch.jobs.state import JobOptions

    assert JobOptions.from_json('{"budget_usd": 3.5}').max_cost_usd == 3.5
    assert JobOptions.from_json(JobOptions(max_cost_usd=2.0).to_json()).max_cost_usd == 2.0


def test_stopped_budget_is_terminal_and_the_cli_says_where_the_checkpoint_is(tmp_path, monkeypatch, capsys):
    from launch.submit import main

    assert JobState.STOPPED_BUDGET.terminal and allowed(JobState.RECOVERING, JobState.STOPPED_BUDGET)
    assert not allowed(JobState.STOPPED_BUDGET, JobState.RUNNING)
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    dry = ["--gpu", "cpu", "--job", "jobs/smoke.yaml", "--dry_run", "--job_id", "b1", "--max_cost", "2"]
    assert main(dry) == 0
    spec = capsys.readouterr().out
    (tmp_path / "runs" / "b1").mkdir(parents=True)
    (tmp_path / "runs" / "b1" / "spec.json").write_text(spec)
    reg = Registry(tmp_path / "runs", redact=lambda v: v)
    reg.claim("b1", "local", managed=True)
    reg.transition("b1", JobState.STOPPED_BUDGET, "max_cost $2.00 reached; last committed checkpoint: step 9")
    assert main(["resume", "b1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: job b1 STOPPED_BUDGET: max_cost $2.00 reached; last committed checkpoint: step 9"]
    assert main(["list"]) == 0 and "STOPPED_BUDGET" in capsys.readouterr().out
    assert main(["cancel", "b1"]) == 0 and "already STOPPED_BUDGET" in capsys.readouterr().out
    assert main(["--gpu", "cpu", "--job", "jobs/smoke.yaml", "--max_cost", "2"]) == 2  # no controller
    assert "--max_cost needs --managed" in capsys.readouterr().err
    assert main(["--gpu", "cpu", "--job", "jobs/smoke.yaml", "--max_cost", "-1", "--managed"]) == 2
