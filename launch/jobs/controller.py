"""The managed-job controller: the loop only. Instance state + run report → policy decision → action.

Each poll reads the instance's typed state (``Compute.status``) and the run's report (``ReportSource``, in
practice ``RunStore`` on object storage), asks ``RecoveryPolicy.decide`` and carries the decision out:
keep polling; relaunch (destroy what is left, walk the offers again, the container resumes from the last
committed checkpoint); finish SUCCEEDED (destroy the instance, list the artifacts); FAILED (a training error
from the report's failed stage is never relaunched; or a policy limit); CANCELLED; at --max_cost, STOPPED_BUDGET (one warning event at 80%; at the cap the instance is stopped so
the container commits a checkpoint, then destroyed). A final report ends the job
whatever the instance's state, and the instance is destroyed. Success is never read from log wording.

The registry is the source of truth: a restarted controller (``submit.py resume JOB``) adopts the instance it
finds recorded, or labelled with the job id, instead of creating a second one. Clock and sleep are injected so
the whole loop runs in milliseconds under test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from launch.backends.base import (
    CloudError,
    Compute,
    InstanceState,
    InstanceStatus,
    LaunchRequest,
    NoCapacity,
    OfferQuery,
    RequestRejected,
)
from launch.jobs.lease import Lease
from launch.jobs.offers import Cancelled, Launched, OfferWalk, destroy, offer_keys
from launch.jobs.plan import JobPlan
from launch.jobs.recovery import Action, Decision, Observation, RecoveryPolicy, usd
from launch.jobs.state import Cause, JobState, Notice, Registry
from qa_train.contract import FailureReason, RunReport

logger = logging.getLogger(__name__)


BUDGET_WARNING = "budget warning"  # how the warning reads; found again by its cause (Notice.BUDGET_WARNING)


class ReportSource(Protocol):
    """Where the run's report is read (``qa_train.storage.RunStore``; an in-memory one in unit tests)."""

    def read_report(self) -> RunReport | None: ...


class ControllerError(RuntimeError):
    """The controller cannot go on safely (e.g. it cannot tell whether an instance of the job exists)."""


class RegistryHooks:
    """The offer walk's events, recorded in the registry (what a restarted controller re-attaches from)."""

    def __init__(self, reg: Registry, job_id: str, echo: Callable[[str], None]):
        self.reg, self.job_id, self.echo = reg, job_id, echo

    def created(self, launched: Launched) -> None:
        n = self.reg.add_launch(
            self.job_id,
            backend=launched.backend,
            instance_id=launched.instance_id,
            offer_id=launched.offer.offer_id if launched.offer else None,
            machine_id=launched.machine_id,
            price_per_hour=launched.price_per_hour,
        )
        price = f" at ${launched.price_per_hour:.3f}/h" if launched.price_per_hour else ""
        where = f" on offer {launched.offer.offer_id}" if launched.offer else ""
        self.echo(f"launch {n}: {launched.backend} instance {launched.instance_id}{where}{price}")

    def discarded(self, launched: Launched, reason: str, blocklist: bool) -> None:
        if launched.machine_id is not None:
            self.reg.record_machine(self.job_id, launched.instance_id, launched.machine_id)
        self.reg.end_launch(self.job_id, launched.instance_id, reason)
        if blocklist:
            self.reg.block(
                self.job_id, offer_keys(launched.backend, launched.offer, launched.machine_id), reason
            )
        self.echo(f"{launched.backend} instance {launched.instance_id} destroyed: {reason}")

    def cancelled(self) -> bool:
        row = self.reg.get(self.job_id)
        return row is None or row.state == JobState.CANCELLED


class Controller:
    """Drive one managed job to SUCCEEDED, FAILED, CANCELLED or STOPPED_BUDGET. ``run()`` returns that state."""

    def __init__(
        self,
        reg: Registry,
        job_id: str,
        *,
        computes: dict[str, Compute],
        request: LaunchRequest,
        query: OfferQuery,
        policy: RecoveryPolicy,
        reports: ReportSource | None,
        poll_s: float = 10.0,
        artifacts: Callable[[], list[str]] | None = None,
        logs_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        echo: Callable[[str], None] | None = None,
        lease: Lease | None = None,
        stop_wait_s: float = 120.0,
    ):
        self.reg = reg
        self.job_id = job_id
        self.computes = computes
        self.request = request
        self.query = query
        self.policy = policy
        self.reports = reports
        self.poll_s = poll_s
        self.artifacts = artifacts
        self.logs_dir = logs_dir
        self.clock = clock
        self.sleep = sleep
        self.stop_wait_s = stop_wait_s  # --max_cost: how long the container gets to commit a last checkpoint
        self._warned: bool | None = None  # the 80% budget warning was recorded (None: not looked up yet)
        self._echo = echo or (lambda s: print(s, flush=True))
        self.lease = lease or Lease(reg, job_id, clock=clock, stale_s=max(60.0, 5 * poll_s))
        self.hooks = RegistryHooks(reg, job_id, self.note)
        self._machine_known: set[str] = set()  # instances whose machine this controller recorded
        self.walk = OfferWalk(
            computes,
            ready_timeout_s=policy.ready_timeout_s,
            poll_s=min(poll_s, 5.0),
            hooks=self.hooks,
            clock=clock,
            sleep=sleep,
        )

    # -- small helpers ---------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        logger.info("%s: %s", self.job_id, text)
        self._echo(f"[managed] {self.job_id}: {text}")

    def _state(self) -> JobState:
        row = self.reg.get(self.job_id)
        if row is None:
            raise ControllerError(f"no job {self.job_id!r} in {self.reg.path}")
        return row.state

    def _to(self, state: JobState, reason: str, cause: Cause | None = None) -> bool:
        """Record a transition unless the job already ended (a user's cancel always wins)."""
        moved = self.reg.transition(self.job_id, state, reason, cause)
        if moved:
            self.note(f"{state} — {reason}")
        return moved

    def _sleep(self, seconds: float) -> bool:
        """Sleep in poll-sized steps; False as soon as the job is cancelled."""
        end = self.clock() + seconds
        while True:
            if self.hooks.cancelled():
                return False
            left = end - self.clock()
            if left <= 0:
                return True
            self.sleep(min(max(self.poll_s, 0.01), left))

    def _status(self, cur: Launched) -> InstanceStatus | None:
        try:
            return self.computes[cur.backend].status(cur.instance_id)
        except CloudError as e:  # an API outage is not a preemption: never relaunch on it
            logger.warning("%s: status of %s failed: %s", self.job_id, cur.instance_id, e)
            return None

    def _note_machine(self, cur: Launched, st: InstanceStatus | None) -> None:
        """Record the launch's machine from the first status that names it, so a loss blocklists it. On RunPod
        this is the only place it is known (offers are GPU types; RunPod places the pod), so there a relaunch
        cannot avoid a machine: the blocklist only steers offers that carry machine ids (vast)."""
        if st is None or st.machine_id is None or cur.instance_id in self._machine_known:
            return
        self.reg.record_machine(self.job_id, cur.instance_id, st.machine_id)
        self._machine_known.add(cur.instance_id)

    def _report(self) -> tuple[RunReport | None, bool]:
        if self.reports is None:
            return None, True
        try:
            return self.reports.read_report(), True
        except Exception as e:  # storage outage or a half-written report: unknown, never "lost"
            logger.warning("%s: run report unreadable: %s", self.job_id, e)
            return None, False

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> JobState:
        self.lease.acquire()
        try:
            return self._loop()
        finally:
            self.lease.release()

    def _loop(self) -> JobState:
        state = self._state()
        if state.terminal:
            self.note(f"already {state}: {self.reg.last_reason(self.job_id)}")
            return state
        cur = self._adopt()
        if cur is None and state == JobState.PENDING:
            self._to(JobState.STARTING, "walking the offers for the first instance")
        attempt, waiting_since, provisioning_since = 0, None, None
        while True:
            if self.hooks.cancelled():
                return self._end_cancelled()
            if cur is None:
                try:
                    cur = self._adopt()
                    if cur is None:
                        spent = self.reg.cost(self.job_id)
                        if self.policy.over_budget(spent):  # nothing runs: nothing to checkpoint, end now
                            why = f"{self.policy.budget_reason(spent)}; no instance was running"
                            return self._end_budget(why, self._committed_step())
                        cur = self.walk.launch(self.request, self.query, self.reg.blocked(self.job_id))
                except Cancelled:
                    return self._end_cancelled()
                except RequestRejected as e:
                    why = f"the cloud refused the request: {e}"
                    return self._end(JobState.FAILED, why, None, FailureReason.REQUEST_REJECTED)
                except (NoCapacity, CloudError) as e:
                    waiting_since = self.clock() if waiting_since is None else waiting_since
                    d = self.policy.on_no_capacity(attempt, self.clock() - waiting_since, str(e))
                    if d.action == Action.FAIL:
                        return self._end(JobState.FAILED, d.reason, None, d.cause)
                    self.note(d.reason)
                    if not self._sleep(d.delay_s):
                        return self._end_cancelled()
                    attempt += 1
                    continue
                attempt, waiting_since, provisioning_since = 0, None, None
            st = cur.status if cur.status is not None else self._status(cur)
            cur = replace(cur, status=None)  # use a status the walk handed over once, then poll afresh
            self._note_machine(cur, st)
            if (
                st is not None
                and st.state == InstanceState.RUNNING
                and self._state()
                in (
                    JobState.STARTING,
                    JobState.RECOVERING,
                )
            ):
                self._to(JobState.RUNNING, f"{cur.backend} instance {cur.instance_id} is running")
            if st is not None and st.state == InstanceState.PROVISIONING:
                provisioning_since = self.clock() if provisioning_since is None else provisioning_since
            else:
                provisioning_since = None
            d = self._decide(st, provisioning_since)
            if d.action == Action.POLL:
                self.lease.beat()
                if not self._sleep(self.poll_s):
                    return self._end_cancelled()
                continue
            if d.action == Action.CANCEL:
                return self._end_cancelled()
            if d.action == Action.SUCCEED:
                return self._end(JobState.SUCCEEDED, d.reason, cur)
            if d.action == Action.FAIL:
                return self._end(JobState.FAILED, d.reason, cur, d.cause)
            if d.action == Action.STOP_BUDGET:
                return self._stop_for_budget(cur, d.reason)
            # RELAUNCH
            self._retire(cur, d.reason, blocklist=d.blocklist)
            row = self.reg.get(self.job_id)
            assert row is not None
            self.reg.set(self.job_id, restarts=row.restarts + 1)
            if row.state != JobState.RECOVERING and not self._to(JobState.RECOVERING, d.reason, d.cause):
                return self._end_cancelled()
            if row.state == JobState.RECOVERING:
                self.note(d.reason)
            cur = None

    def _decide(self, st: InstanceStatus | None, provisioning_since: float | None) -> Decision:
        row = self.reg.get(self.job_id)
        assert row is not None
        report, known = self._report()
        obs = Observation(
            instance=st,
            report=report,
            report_known=known,
            has_reports=self.reports is not None,
            cancelled=row.state == JobState.CANCELLED,
            restarts=row.restarts,
            spent_usd=self.reg.cost(self.job_id),
            provisioning_s=0.0 if provisioning_since is None else self.clock() - provisioning_since,
            now=self.clock(),
        )
        self._warn_budget(obs.spent_usd)
        d = self.policy.decide(obs)
        if d.action == Action.RELAUNCH and self.reports is not None:
            # the instance ended a moment ago: its last report write may have landed since the first read
            report, known = self._report()
            d = self.policy.decide(replace(obs, report=report, report_known=known))
        if report is not None and report.last_committed_step is not None:
            if report.last_committed_step != row.last_step:
                self.reg.set(self.job_id, last_step=report.last_committed_step)
        return d

    # -- --max_cost ------------------------------------------------------------------------------------------
    def _warn_budget(self, spent: float) -> None:
        """One warning per job at 80% of --max_cost, recorded as an event (a restarted controller reads it
        back instead of warning again)."""
        if not self.policy.near_budget(spent):
            return
        if self._warned is None:
            self._warned = any(e.cause == Notice.BUDGET_WARNING for e in self.reg.events(self.job_id))
        if self._warned:
            return
        cap = self.policy.max_cost_usd
        assert cap is not None
        text = (f"{BUDGET_WARNING}: {usd(spent)} spent of max_cost {usd(cap)} "
                f"({100 * spent / cap:.0f}%); the job is stopped at the cap")  # fmt: skip
        self.reg.note(self.job_id, text, Notice.BUDGET_WARNING)
        logger.warning("%s: %s", self.job_id, text)
        self.note(text)
        self._warned = True

    def _committed_step(self) -> int | None:
        """The last committed checkpoint's step: the run report's, else the registry's last record of it."""
        report, _ = self._report()
        if report is not None and report.last_committed_step is not None:
            return report.last_committed_step
        row = self.reg.get(self.job_id)
        return row.last_step if row else None

    def _stop_for_budget(self, cur: Launched, reason: str) -> JobState:
        """At the cap: ``stop`` the instance (the cloud sends SIGTERM; the trainer saves and commits a
        checkpoint when that fits the grace period), wait up to ``stop_wait_s`` for a newer committed step or
        for the instance to end, then destroy it and end STOPPED_BUDGET (or as the run's final report says,
        when it finished meanwhile)."""
        before = self._committed_step()
        compute = self.computes[cur.backend]
        self.note(f"{reason}: asking {cur.backend} instance {cur.instance_id} to checkpoint and stop "
                  f"(waiting up to {self.stop_wait_s:.0f}s)")  # fmt: skip
        try:
            compute.stop(cur.instance_id)
        except CloudError as e:  # cannot ask it to save: destroy it anyway, the cap is the user's limit
            logger.warning("%s: stop of %s failed: %s", self.job_id, cur.instance_id, e)
            self.note(f"stop of {cur.instance_id} failed ({e}); destroying it without a last checkpoint")
        else:
            deadline = self.clock() + self.stop_wait_s
            while (left := deadline - self.clock()) > 0:
                self.sleep(min(max(self.poll_s, 0.01), 5.0, left))
                report, _ = self._report()
                step = report.last_committed_step if report is not None else None
                if report is not None and report.final:
                    break
                if step is not None and (before is None or step > before):
                    self.note(f"checkpoint of step {step} committed")
                    break
                st = self._status(cur)
                if st is not None and st.state not in (InstanceState.RUNNING, InstanceState.PROVISIONING):
                    break
            else:
                self.note(f"no newer checkpoint after {self.stop_wait_s:.0f}s; destroying the instance")
        report, _ = self._report()
        if report is not None and report.final:  # it finished while stopping: that is the outcome
            d = self.policy.decide(Observation(None, report))
            end = JobState.SUCCEEDED if d.action == Action.SUCCEED else JobState.FAILED
            return self._end(end, d.reason, cur, d.cause)
        self._retire(cur, reason, blocklist=False)
        return self._end_budget(reason, self._committed_step())

    def _end_budget(self, reason: str, step: int | None) -> JobState:
        if step is not None:
            self.reg.set(self.job_id, last_step=step)
            layout = getattr(self.reports, "layout", None)
            where = f" ({layout.checkpoint(step)})" if layout is not None else ""
            reason += f"; last committed checkpoint: step {step}{where}"
        else:
            reason += "; no checkpoint was committed"
        return self._end(JobState.STOPPED_BUDGET, reason, None, FailureReason.MAX_COST)

    # -- adopting, retiring, ending --------------------------------------------------------------------------
    def _adopt(self) -> Launched | None:
        """The job's live instance: the registry's open launch, else one labelled with the job id (created
        just before a controller died, or by an ambiguous create). Never create twice."""
        open_ = self.reg.open_launches(self.job_id)
        if open_:
            last = open_[-1]
            for older in open_[:-1]:  # cannot happen in one controller's life; tidy up if it did
                self._retire(Launched(older.backend, older.instance_id), "superseded", blocklist=False)
            self.note(f"re-attached to {last.backend} instance {last.instance_id}")
            return Launched(last.backend, last.instance_id)
        known = {x.instance_id for x in self.reg.launches(self.job_id)}
        for name, compute in self.computes.items():
            try:
                found = [str(i) for i in compute.find(self.job_id)]
            except CloudError as e:  # an API hiccup must not turn into a second launch
                raise ControllerError(
                    f"cannot list {name} instances of {self.job_id} to re-attach: {e}"
                ) from e
            for iid in found:
                if iid in known:  # an ended launch that is still there: finish destroying it
                    destroy(compute, iid, sleep=self.sleep)
                    continue
                self.reg.add_launch(self.job_id, backend=name, instance_id=iid)
                self.note(f"adopted unrecorded {name} instance {iid} labelled with the job id")
                return Launched(name, iid)
        return None

    def _retire(self, cur: Launched, reason: str, *, blocklist: bool) -> None:
        """Keep its logs (for people), destroy it, close its launch (cost stops), blocklist its machine."""
        compute = self.computes[cur.backend]
        self._save_logs(compute, cur)
        destroy(compute, cur.instance_id, sleep=self.sleep)
        self.reg.end_launch(self.job_id, cur.instance_id, reason)
        if blocklist:
            rec = next((x for x in self.reg.launches(self.job_id) if x.instance_id == cur.instance_id), None)
            keys = offer_keys(cur.backend, cur.offer, rec.machine_id if rec else None)
            self.reg.block(self.job_id, keys, reason)

    def _save_logs(self, compute: Compute, cur: Launched) -> None:
        if self.logs_dir is None:
            return
        try:
            lines = list(compute.logs(cur.instance_id, follow=False, tail=2000))
        except Exception as e:  # logs are for people; a missing log never changes a decision
            logger.info("%s: logs of %s unavailable: %s", self.job_id, cur.instance_id, e)
            return
        if not lines:
            return
        n = next((x.n for x in self.reg.launches(self.job_id) if x.instance_id == cur.instance_id), 0)
        path = self.logs_dir / f"launch-{n}-{cur.backend}-{cur.instance_id}.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
        except OSError as e:
            logger.warning("could not save logs to %s: %s", path, e)

    def _end(
        self, state: JobState, reason: str, cur: Launched | None, cause: FailureReason | None = None
    ) -> JobState:
        if cur is not None:
            self._retire(cur, reason, blocklist=False)
        for x in self.reg.open_launches(self.job_id):
            self._retire(Launched(x.backend, x.instance_id), reason, blocklist=False)
        if not self._to(state, reason, cause):
            return self._state()
        if state == JobState.SUCCEEDED and self.artifacts is not None:
            for line in self.artifacts():
                self._echo(line)
        return state

    def _end_cancelled(self) -> JobState:
        for x in self.reg.open_launches(self.job_id):
            self._retire(Launched(x.backend, x.instance_id), "cancelled by user", blocklist=False)
        self._to(JobState.CANCELLED, "cancelled by user", FailureReason.CANCELLED_BY_USER)
        self.note("cancelled; no instance left")
        return JobState.CANCELLED


def controller_for(
    reg: Registry, plan: JobPlan, logs_dir: Path | None, echo: Callable[[str], None]
) -> Controller:
    """The controller of a recorded job, as ``submit --managed`` and ``resume`` run it."""
    from launch.jobs.status import artifact_lines, artifacts

    o = plan.options
    policy = RecoveryPolicy(max_restarts=o.max_restarts, backoff_s=o.backoff_s, backoff_max_s=o.backoff_max_s,
                            capacity_wait_s=o.capacity_wait_s, ready_timeout_s=o.ready_timeout_s,
                            max_cost_usd=o.max_cost_usd)  # fmt: skip

    def listed() -> list[str]:
        where = artifacts(plan)
        return artifact_lines(where) + [json.dumps({"artifacts": where})]

    return Controller(reg, plan.job_id, computes=plan.computes, request=plan.request, query=plan.query,
                      policy=policy, reports=plan.store, poll_s=o.poll_s, artifacts=listed, logs_dir=logs_dir,
                      echo=echo)  # fmt: skip
