"""What ``status`` and ``list`` show: the registry's record, the run report from object storage, the live
instance state and, once the run succeeded, where its artifacts are.

An unmanaged job has no controller watching it, so ``status`` is where its registry state catches up with
the run: the same policy as the controller decides (a final report ends the job; an instance that ended
without one was lost, and an unmanaged job is not relaunched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from launch.backends.base import CloudError, Compute, InstanceStatus
from launch.jobs.local_run import LocalRun
from launch.jobs.plan import JobPlan
from launch.jobs.recovery import Action, Observation, RecoveryPolicy
from launch.jobs.state import JobRow, JobState, Registry
from launch.jobs.watch import progress, progress_lines
from qa_train.contract import EVAL, FINAL, MERGED, FailureReason, RunMetrics, RunReport, report_dict

logger = logging.getLogger(__name__)


def summary(reg: Registry, job_id: str) -> dict[str, Any]:
    """The registry's view: state, restarts, cost so far, last committed step, live instance."""
    row = reg.get(job_id)
    if row is None:
        raise KeyError(job_id)
    return {
        "job_id": job_id,
        "state": str(row.state),
        "managed": row.managed,
        "backend": row.backend,
        "instance_id": row.instance_id,
        "restarts": row.restarts,
        "failure": reg.failure(
            job_id
        ),  # why it ended (a FailureReason value), None unless it failed or stopped
        "launches": len(reg.launches(job_id)),
        "cost_usd": round(reg.cost(job_id), 4),
        "last_step": row.last_step,
        "run_uri": row.run_uri,
        "controller_pid": row.controller_pid,
    }


def expected_artifacts(plan: JobPlan) -> dict[str, str]:
    """Folder name in object storage → what it holds, for the stages this job runs."""
    stages = plan.spec.job.stages or []
    out = {}
    if "train" in stages:
        out[FINAL] = "final model" + (" (adapter)" if plan.spec.job.use_lora else "")
    if "merge" in stages:
        out[MERGED] = "merged model"
    if "eval" in stages:
        out[EVAL] = "eval summary + predictions"
    return out


def artifacts(plan: JobPlan) -> dict[str, Any]:
    """Each expected folder of the run in object storage and whether it is committed."""
    if plan.store is None:
        local = LocalRun.of(plan)
        if local is not None:
            return local.artifacts(expected_artifacts(plan))
        return {"location": None, "note": "the job has no sync target: outputs stayed on the instance"}
    root = plan.store.layout.root
    out: dict[str, Any] = {"location": root, "folders": {}}
    try:
        found = {f.name: f for f in plan.store.folders()}
    except Exception as e:  # storage down: say so, the run's state stands
        out["error"] = f"cannot list {root}: {e}"
        found = {}
    for name, what in expected_artifacts(plan).items():
        f = found.get(name)
        out["folders"][name] = {"what": what, "uri": f"{root}/{name}", "committed": bool(f and f.committed),
                                "files": f.num_files if f else 0}  # fmt: skip
    return out


def artifact_lines(where: dict[str, Any]) -> list[str]:
    if not where.get("location"):
        return [f"[managed] {where.get('note')}"]
    lines = [f"[managed] artifacts in {where['location']}:"]
    for f in where.get("folders", {}).values():
        mark = "ok" if f["committed"] else "MISSING"
        lines.append(f"  {f['what']:<28} {f['uri']}  [{mark}, {f['files']} files]")
    if where.get("error"):
        lines.append(f"  ({where['error']})")
    return lines


def job_status(
    reg: Registry, row: JobRow, plan: JobPlan, compute: Callable[[str], Compute]
) -> dict[str, Any]:
    """The whole picture of one job; settles an unmanaged job's registry state from what it sees."""
    live_launch = reg.open_launches(row.job_id)
    st: InstanceStatus | None = None
    live: dict[str, Any] | None = None
    if live_launch:
        x = live_launch[-1]
        try:
            st = compute(x.backend).status(x.instance_id)
            live = {"backend": x.backend, "instance_id": x.instance_id, "state": str(st.state),
                    "detail": st.detail, "exit_code": st.exit_code}  # fmt: skip
        except CloudError as e:
            live = {"backend": x.backend, "instance_id": x.instance_id, "error": str(e)}
    report: RunReport | None = None
    report_error = None
    metrics: RunMetrics | None = None
    metrics_error = None
    source = plan.store if plan.store is not None else LocalRun.of(plan)  # a local job: its host folder
    if source is not None:
        try:
            report = source.read_report()
        except Exception as e:  # storage down or a malformed report: shown, never guessed
            report_error = f"{type(e).__name__}: {e}"
        try:
            metrics = source.read_metrics()
        except Exception as e:  # progress is for people: shown as unreadable, the job's state stands
            metrics_error = f"{type(e).__name__}: {e}"
    if not row.managed and not row.state.terminal and live_launch:
        _settle_unmanaged(reg, row, st, report, report_error is None, plan.store is not None)
    doc = summary(reg, row.job_id)
    doc.update(
        live=live,
        report=report_dict(report) if report else None,
        report_error=report_error,
        events=[{"ts": e.ts, "state": str(e.state), "reason": e.reason, "instance_id": e.instance_id,
                 "cause": e.cause} for e in reg.events(row.job_id)],
        launches=[vars(x) for x in reg.launches(row.job_id)],
    )  # fmt: skip
    if report is not None and report.final:
        doc["artifacts"] = artifacts(plan)
    doc["terminal"] = JobState(doc["state"]).terminal  # summary() read the row after any settling above
    doc["progress"] = progress(doc, metrics, reg.clock())
    doc["metrics_error"] = metrics_error
    return doc


def _settle_unmanaged(
    reg: Registry, row: JobRow, st: InstanceStatus | None, report: RunReport | None, known: bool, has: bool
) -> None:
    d = RecoveryPolicy(max_restarts=1).decide(Observation(st, report, known, has))
    if d.action == Action.SUCCEED:
        reg.transition(row.job_id, JobState.SUCCEEDED, d.reason)
    elif d.action == Action.FAIL:
        reg.transition(row.job_id, JobState.FAILED, d.reason, d.cause)
    elif d.action == Action.RELAUNCH:
        reg.transition(row.job_id, JobState.FAILED,
                       "instance lost before the run finished (an unmanaged job is not relaunched; use --managed)",
                       FailureReason.UNMANAGED_LOST)  # fmt: skip
    else:
        return
    if st is None or not st.state.startswith(("PROVISIONING", "RUNNING")):  # ended: its cost stops here
        for x in reg.open_launches(row.job_id):
            reg.end_launch(row.job_id, x.instance_id, d.reason)


def status_lines(doc: dict[str, Any]) -> list[str]:
    """``status`` for people. ``doc["launches"]`` is the list of launches here (``job_status``), a count in
    ``summary``: either way the line shows how many."""
    launches = doc["launches"]
    count = launches if isinstance(launches, int) else len(launches)
    failure = f" [{doc['failure']}]" if doc.get("failure") else ""
    lines = [f"job {doc['job_id']}: {doc['state']}{failure}" + (" (managed)" if doc["managed"] else "")
             + f", {count} launch(es), {doc['restarts']} restart(s), ${doc['cost_usd']:.3f} so far"]  # fmt: skip
    if doc["events"]:
        lines.append(f"  last change: {doc['events'][-1]['reason']}")
    if doc.get("progress"):
        lines += progress_lines(doc["progress"])
    if doc.get("metrics_error"):
        lines.append(f"  metrics unreadable: {doc['metrics_error']}")
    live = doc.get("live")
    if live:
        what = live.get("state") or f"state unknown ({live.get('error')})"
        lines.append(f"  instance: {live['backend']} {live['instance_id']} {what}")
    rep = doc.get("report")
    if rep:
        stages = ", ".join(
            f"{s['name']}={'…' if s['exit_code'] is None else s['exit_code']}" for s in rep["stages"]
        )
        lines.append(f"  run report: {rep['state']}; stages: {stages or '-'}; last committed step: "
                     f"{rep.get('last_committed_step')}")  # fmt: skip
    elif doc.get("report_error"):
        lines.append(f"  run report unreadable: {doc['report_error']}")
    elif doc.get("run_uri"):
        lines.append("  run report: none yet")
    if doc.get("artifacts"):
        lines += [s.replace("[managed] ", "") for s in artifact_lines(doc["artifacts"])]
    return lines
