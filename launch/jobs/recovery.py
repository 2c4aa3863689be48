"""The recovery policy: what to do given the instance's state and the run's report. One object, pure.

Why one object: the backoff, the restart limit, the budget and the ready deadline were spread over a 700-line
controller; here each rule is one line of ``decide`` and a test can check every rule without a cloud or a clock.
The controller gathers an ``Observation``, asks for a ``Decision`` and carries it out; nothing else decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from launch.backends.base import InstanceState, InstanceStatus
from qa_train.contract import ExitCode, FailureReason, RunReport, RunState

# SIGKILL / SIGTERM from outside: docker kill, a host shutting the container down
KILL_EXIT_CODES = (ExitCode.SIGKILL, ExitCode.SIGTERM)


class Action(StrEnum):
    POLL = "poll"  # nothing to do: keep watching
    RELAUNCH = "relaunch"  # the instance is lost: destroy what is left, walk the offers again
    WAIT = "wait"  # no capacity: sleep ``delay_s``, then walk the offers again
    SUCCEED = "succeed"  # the run says it succeeded: destroy the instance, list the artifacts
    FAIL = "fail"  # a training error, or the policy's limits are reached: never relaunched
    CANCEL = "cancel"  # the user cancelled
    STOP_BUDGET = "stop_budget"  # --max_cost reached: ask the container to checkpoint, then destroy and end


def usd(amount: float) -> str:
    """Dollars for a message: cents, or four decimals below a cent (a $0.0005 cap must not read "$0.00")."""
    return f"${amount:,.2f}" if amount == 0 or abs(amount) >= 0.01 else f"${amount:.4f}"


@dataclass(frozen=True)
class Decision:
    """``cause``: why, as a value the registry records and ``status`` shows (``reason`` is for people only);
    None for POLL, WAIT and SUCCEED."""

    action: Action
    reason: str = ""
    delay_s: float = 0.0
    blocklist: bool = False  # RELAUNCH: the machine lost the job; prefer other machines from now on
    cause: FailureReason | None = None


@dataclass(frozen=True)
class Observation:
    """What the controller saw in one poll.

    ``instance`` None: the cloud did not answer (an outage is not a preemption). ``report_known`` False: the
    job syncs but the report could not be read (storage outage). ``has_reports`` False: a local job without a
    sync target; then the container's exit code decides."""

    instance: InstanceStatus | None
    report: RunReport | None = None
    report_known: bool = True
    has_reports: bool = True
    cancelled: bool = False
    restarts: int = 0
    spent_usd: float = 0.0
    provisioning_s: float = 0.0  # how long the instance has been PROVISIONING (0 when it is not)
    now: float | None = None  # the controller's clock (epoch s), for the upload bound; None: not known


@dataclass(frozen=True)
class RecoveryPolicy:
    max_restarts: int = 3
    backoff_s: float = 30.0  # first wait when no capacity; doubles up to backoff_max_s
    backoff_max_s: float = 600.0
    capacity_wait_s: float = 6 * 3600.0  # give up after waiting this long for capacity
    ready_timeout_s: float = 1800.0  # a launch not RUNNING by then is destroyed and its machine blocklisted
    max_cost_usd: float | None = None  # stop when price × time over every launch reaches it
    warn_fraction: float = 0.8  # one warning (an event) when the spend reaches this share of max_cost_usd

    def decide(self, obs: Observation) -> Decision:
        if obs.cancelled:
            return Decision(Action.CANCEL, "cancelled by user", cause=FailureReason.CANCELLED_BY_USER)
        if obs.report is not None and obs.now is not None and obs.report.uploads_held(obs.now):
            return Decision(Action.POLL, _held_reason(obs.report, obs.now))  # its disk holds the only copies
        if obs.report is not None and obs.report.final:
            if _storage_failure(obs.report):  # not the training's fault: relaunch, resume from storage
                why = f"storage failure, retried: {_failed_reason(obs.report)}"
                return self._lost(obs, why, FailureReason.STORAGE_ERROR, blocklist=False)
            return _from_final_report(obs.report)
        if self.over_budget(obs.spent_usd):
            return Decision(
                Action.STOP_BUDGET, self.budget_reason(obs.spent_usd), cause=FailureReason.MAX_COST
            )
        st = obs.instance
        if st is None:
            return Decision(Action.POLL, "instance state unknown (cloud did not answer)")
        if st.state == InstanceState.RUNNING:
            return Decision(Action.POLL, "running")
        if st.state == InstanceState.PROVISIONING:
            if obs.provisioning_s > self.ready_timeout_s:
                why = f"not running after {obs.provisioning_s:.0f}s ({st.detail})"
                return self._lost(obs, why, FailureReason.NOT_READY)
            return Decision(Action.POLL, "provisioning")
        # the instance ended (EXITED / STOPPED / FAILED / GONE) and the run did not say it finished
        if not obs.has_reports:
            return self._by_exit_code(obs)
        if not obs.report_known:
            return Decision(Action.POLL, "instance ended; waiting for the run report to be readable")
        return self._lost(obs, _lost_reason(st), FailureReason.INSTANCE_LOST)

    def on_no_capacity(self, attempt: int, waited_s: float, why: str) -> Decision:
        """``attempt`` counts the walks that found nothing (0 for the first); backoff doubles up to the cap."""
        delay = self.backoff(attempt)
        if waited_s + delay > self.capacity_wait_s:
            return Decision(
                Action.FAIL, f"no capacity after {waited_s:.0f}s: {why}", cause=FailureReason.NO_CAPACITY
            )
        return Decision(Action.WAIT, f"no capacity ({why}); retrying in {delay:.0f}s", delay_s=delay)

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_s * (2.0 ** max(attempt, 0)), self.backoff_max_s)

    def over_budget(self, spent_usd: float) -> bool:
        """The cap is reached (not only passed): a job at exactly its cap starts nothing more."""
        return self.max_cost_usd is not None and spent_usd >= self.max_cost_usd

    def near_budget(self, spent_usd: float) -> bool:
        """Time for the one warning: at ``warn_fraction`` of the cap (and not yet at it)."""
        cap = self.max_cost_usd
        return cap is not None and self.warn_fraction * cap <= spent_usd < cap

    def budget_reason(self, spent_usd: float) -> str:
        assert self.max_cost_usd is not None
        return f"max_cost {usd(self.max_cost_usd)} reached ({usd(spent_usd)} spent over every launch)"

    def _lost(self, obs: Observation, why: str, cause: FailureReason, blocklist: bool = True) -> Decision:
        """A machine that lost the job (preempted, failed, killed) is blocklisted: the next launch prefers
        another one (the walk falls back to blocklisted machines only when nothing else is offered). A storage
        failure is not the machine's fault (``blocklist=False``)."""
        if obs.restarts >= self.max_restarts:
            return Decision(
                Action.FAIL,
                f"max_restarts ({self.max_restarts}) reached; last: {why}",
                cause=FailureReason.MAX_RESTARTS,
            )
        why = f"restart {obs.restarts + 1}/{self.max_restarts}: {why}"
        return Decision(Action.RELAUNCH, why, blocklist=blocklist, cause=cause)

    def _by_exit_code(self, obs: Observation) -> Decision:
        """Local Docker without object storage: the container's exit code is all there is."""
        st = obs.instance
        assert st is not None
        code = st.exit_code
        if st.state == InstanceState.EXITED and code == 0:
            return Decision(Action.SUCCEED, "container exited with code 0")
        if st.state == InstanceState.EXITED and code is not None and not ExitCode.killed(code):
            why = f"training error, not relaunched: container exited with code {code}"
            return Decision(Action.FAIL, why, cause=FailureReason.of_exit(code))
        if code is not None and ExitCode.killed(code):
            why = f"container killed by signal {code - 128} (exit {code})"
            return self._lost(obs, why, FailureReason.INSTANCE_KILLED)
        return self._lost(obs, _lost_reason(st), FailureReason.INSTANCE_LOST)


def _lost_reason(st: InstanceStatus) -> str:
    words = {
        InstanceState.EXITED: "container exited before the run finished",
        InstanceState.STOPPED: "instance stopped (preempted or stopped by the host)",
        InstanceState.FAILED: "instance failed",
        InstanceState.GONE: "instance gone",
    }
    what = words.get(st.state, st.state.lower())
    code = f", exit {st.exit_code}" if st.exit_code is not None else ""
    return f"{what}{code}" + (f": {st.detail}" if st.detail else "")


def _held_reason(report: RunReport, now: float) -> str:
    names = ", ".join(report.uploads_pending[:3]) + (", …" if len(report.uploads_pending) > 3 else "")
    left = (report.uploads_until or now) - now
    return f"uploads pending ({names}): the container retries them for {left:.0f}s more; instance kept"


def _storage_failure(report: RunReport) -> bool:
    """The run failed because object storage could not be used (exit 3), or left uploads only on its disk."""
    stage = report.failed_stage()
    return report.state == RunState.FAILED and (
        bool(report.uploads_pending) or (stage is not None and stage.exit_code == ExitCode.STORAGE)
    )


def _failed_reason(report: RunReport) -> str:
    stage = report.failed_stage()
    why = f"stage '{stage.name}' failed (exit {stage.exit_code})" if stage else "the run report says failed"
    if report.error:
        why += f": {report.error}"
    if report.uploads_pending:
        why += f"; uploads pending: {', '.join(report.uploads_pending)}"
    return why


def _from_final_report(report: RunReport) -> Decision:
    if report.state == RunState.SUCCEEDED:
        return Decision(Action.SUCCEED, "the run report says succeeded")
    stage = report.failed_stage()
    why = _failed_reason(report)
    cause = FailureReason.of_exit(stage.exit_code) if stage else FailureReason.TRAINING_ERROR
    if cause == FailureReason.INSTANCE_KILLED:  # a final report: the run itself ended, whatever the signal
        cause = FailureReason.TRAINING_ERROR
    return Decision(Action.FAIL, f"training error, not relaunched: {why}", cause=cause)
