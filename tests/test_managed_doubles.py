"""The managed controller against the vast.ai and RunPod HTTP doubles: the integration tier between the unit tests
(``tests/test_controller.py``: in-memory compute, fake clock) and the real containers (``tests/test_cloud_e2e.py``).

Everything real except the container: the CLI in-process (``launch.submit.main``), the computes from
``launch.backends``, the HTTP doubles (their default ``SimulatedHost``), the registry and SeaweedFS. The test plays
the container's part the way ``python -m qa_train run`` does it: it writes the run report (running → committed
steps → succeeded / failed) to object storage with ``RunStore`` at the moment each scenario needs. Each scenario
follows a cloud behaviour the doubles reproduce from the clouds' references (outbid, no heartbeat, 400, a destroy
that did not happen, a lost create answer, RunPod's restart of an exited container, sold out).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.backends import get_compute
from launch.backends.base import CloudError, LaunchRequest, OfferQuery
from launch.gpus import get_profile
from launch.jobs.controller import Controller
from launch.jobs.recovery import RecoveryPolicy
from launch.jobs.state import JobState, Registry
from qa_train.contract import ENV_SPEC_URI, RunLayout, RunReport, RunState, StageResult
from qa_train.storage import RunStore
from tests.doubles.common import ApiDouble, Reply
from tests.doubles.runpod_api import NO_CAPACITY, RunpodDouble, make_gpu_type
from tests.doubles.vast_api import VastDouble, make_offer

REPO = Path(__file__).resolve().parent.parent
VAST_KEY = "vast-managed-key-1234"
RP_KEY = "runpod-managed-key-5678"
GPU_ID = "NVIDIA RTX A6000"
# the integration tier: a controller per test against the doubles (~20 s in all)
pytestmark = pytest.mark.slow

FLAGS = ["--gpu", "a6000", "--interruptible", "--managed", "--poll_s", "0.05", "--backoff_s", "0.05",
         "--capacity_wait_s", "30", "--ready_timeout_s", "600", "--max_restarts", "3"]  # fmt: skip


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- the clouds ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_ambient_clouds(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith(("VAST_", "RUNPOD_", "REGISTRY_", "QA_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    # the image check asks a registry; here no host pulls anything (SimulatedHost), so any reference will do
    monkeypatch.setattr("launch.images.check_image", lambda ref, auth=None, **kw: "sha256:0")


@pytest.fixture
def vast(monkeypatch) -> Iterator[VastDouble]:
    offers = [make_offer(1, dph_total=0.40, machine_id=501), make_offer(2, dph_total=0.50, machine_id=502),
              make_offer(3, dph_total=0.60, machine_id=503)]  # fmt: skip
    d = VastDouble(api_key=VAST_KEY, offers=offers, start_polls=1).start()
    d.log_delay = 0  # logs "uploaded" at once (the compute waits a second per 404 otherwise)
    monkeypatch.setenv("VAST_API_URL", d.url)
    monkeypatch.setenv("VAST_API_KEY", VAST_KEY)
    yield d
    d.stop()


@pytest.fixture
def runpod(monkeypatch) -> Iterator[RunpodDouble]:
    gpu = make_gpu_type(GPU_ID, 0.30, spot=0.10)
    d = RunpodDouble(api_key=RP_KEY, gpu_types=[gpu], start_polls=1).start()
    d.sse_hold_s = 0.2  # a live pod's log stream closes soon (logs are saved before every destroy)
    monkeypatch.setenv("RUNPOD_API_URL", f"{d.url}/graphql")
    monkeypatch.setenv("RUNPOD_API_KEY", RP_KEY)
    yield d
    d.stop()


def live_vast(vast: VastDouble) -> list[int]:
    with vast.lock:
        return [i for i, v in vast.instances.items() if v.get("actual_status") == "running"]


def loading_vast(vast: VastDouble) -> list[int]:
    with vast.lock:
        return [i for i, v in vast.instances.items() if v.get("actual_status") == "loading"]


def running_pods(runpod: RunpodDouble) -> list[str]:
    with runpod.lock:
        return [p for p, v in runpod.pods.items() if v.get("runtime")]


def vast_creates(vast: VastDouble) -> list[str]:
    return [c.path for c in vast.calls("PUT", r"^/api/v0/asks/\d+/$")]


def runpod_deploys(runpod: RunpodDouble) -> list[dict]:
    return [v for op, v in runpod.operations() if op in ("podRentInterruptable", "podFindAndDeployOnDemand")]


# -- the job, and the container's part --------------------------------------------------------------------------
class Job:
    """One managed job submitted with the real CLI in-process; its controller runs attached, in a thread."""

    def __init__(self, tmp_path: Path, s3: Any, backend: str, job_id: str, *extra: str, start: bool = True):
        self.runs = tmp_path / "runs"
        self.job_id = job_id
        self.run_name = f"run-{job_id}"
        doc = yaml.safe_load((REPO / "jobs" / "mistral-qa-lora.yaml").read_text())
        doc["run_name"] = self.run_name
        doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
        self.job_file = tmp_path / f"{job_id}.yaml"
        self.job_file.write_text(yaml.safe_dump(doc))
        self.store = RunStore(RunLayout.of(s3.uri("runs"), self.run_name), s3.endpoint_url)
        self.argv = ["--job", str(self.job_file), "--backend", backend, "--job_id", job_id, *FLAGS, *extra]
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, args=(self.argv,), daemon=True)
        if start:
            self.thread.start()

    def _run(self, argv: list[str]) -> None:
        from launch.submit import main

        self.rc = main(argv)

    def cli(self, *argv: str) -> int:
        from launch.submit import main

        return main(list(argv))

    @property
    def reg(self) -> Registry:
        return Registry(self.runs)

    def state(self) -> str:
        row = self.reg.get(self.job_id)
        return str(row.state) if row else "?"

    def states(self) -> list[str]:
        return [str(e.state) for e in self.reg.events(self.job_id)]

    def join(self, timeout: float = 30.0) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"controller still running; state {self.state()}"
        return self.rc

    # the container's side: what `python -m qa_train run` writes to <target>/<run>/report.json
    def running(self, step: int | None, launch: int = 1, instance: object = None) -> None:
        self.store.write_report(RunReport(self.run_name, RunState.RUNNING, [StageResult("train")],
                                          last_committed_step=step, launch=launch,
                                          instance_id=None if instance is None else str(instance)))  # fmt: skip

    def succeeded(self, step: int, launch: int = 1) -> None:
        stages = [StageResult("train", 0), StageResult("merge", 0), StageResult("eval", 0)]
        self.store.write_report(RunReport(self.run_name, RunState.SUCCEEDED, stages, last_committed_step=step,
                                          launch=launch))  # fmt: skip

    def failed(self, error: str) -> None:
        self.store.write_report(RunReport(self.run_name, RunState.FAILED, [StageResult("train", 1)],
                                          last_committed_step=None, error=error))  # fmt: skip


# -- vast ------------------------------------------------------------------------------------------------------
def test_vast_outbid_while_running_relaunches_on_another_machine_and_resumes(tmp_path, s3, vast):
    job = Job(tmp_path, s3, "vast", "vo-run")
    first = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="first instance running")[0]
    assert vast.instances[first]["machine_id"] == 501  # cheapest offer first
    vast.host.print(str(first), "step 1", "step 2 saved checkpoint-2")
    job.running(step=2, instance=first)
    wait_for(lambda: job.reg.get(job.job_id).last_step == 2, what="committed step seen")
    vast.preempt(first)  # outbid: cur_state = intended_status = next_state = stopped
    second = wait_for(lambda: [i for i in live_vast(vast) if i != first] if job.state() == "RUNNING" else None,
                      what="relaunched instance")[0]  # fmt: skip
    assert first in vast.destroyed and first not in vast.instances
    assert vast.instances[second]["machine_id"] == 502  # not the machine that was outbid
    puts = vast.calls("PUT", r"^/api/v0/asks/\d+/$")
    assert [c.path for c in puts] == ["/api/v0/asks/1/", "/api/v0/asks/2/"]
    assert all(c.body["price"] and c.body["label"] == "vo-run" for c in puts)  # bids, named after the job
    # resumed: the new container reads the same spec of the same run (and so its committed checkpoints)
    assert puts[0].body["env"] == puts[1].body["env"]
    assert puts[1].body["env"][ENV_SPEC_URI] == job.store.layout.spec
    job.running(step=4, launch=2, instance=second)
    job.succeeded(step=6, launch=2)
    assert job.join() == 0
    assert job.state() == "SUCCEEDED" and vast.live_instances() == [] and vast.destroyed == [first, second]
    assert job.states() == ["PENDING", "STARTING", "RUNNING", "RECOVERING", "RUNNING", "SUCCEEDED"]
    row = job.reg.get(job.job_id)
    assert row.restarts == 1 and row.last_step == 6
    launches = job.reg.launches(job.job_id)
    assert [(x.offer_id, x.machine_id) for x in launches] == [("1", "501"), ("2", "502")]
    assert all(x.ended_at for x in launches) and "stopped" in (launches[0].end_reason or "")
    assert "vast/machine/501" in job.reg.blocked(job.job_id)
    logs = job.runs / job.job_id / "logs"
    assert "step 2 saved checkpoint-2" in (logs / f"launch-1-vast-{first}.log").read_text()


def test_vast_outbid_while_loading_is_relaunched_without_waiting_for_the_ready_timeout(tmp_path, s3, vast):
    vast.start_polls = 10**6  # the first instance stays "loading" (pulling the image)
    job = Job(tmp_path, s3, "vast", "vo-load")
    first = wait_for(lambda: loading_vast(vast), what="first instance loading")[0]
    vast.start_polls = 1
    t0 = time.monotonic()
    vast.preempt(first, actual_status="loading")  # outbid before it ever ran: stopped in all three fields
    second = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="relaunched instance")[0]
    assert time.monotonic() - t0 < 10  # not the 600 s ready timeout
    assert first in vast.destroyed and vast.instances[second]["machine_id"] == 502
    job.succeeded(step=3)
    assert job.join() == 0 and vast.live_instances() == []
    assert job.states() == ["PENDING", "STARTING", "RECOVERING", "RUNNING", "SUCCEEDED"]
    assert "vast/machine/501" in job.reg.blocked(job.job_id)


def test_vast_unknown_status_fails_the_instance_and_the_walk_takes_the_next_offer(tmp_path, s3, vast):
    vast.start_polls = 10**6
    job = Job(tmp_path, s3, "vast", "vu-1")
    first = wait_for(lambda: loading_vast(vast), what="first instance loading")[0]
    vast.set_state(first, "unknown", "no recent heartbeat")  # the docs: such an instance never runs
    vast.start_polls = 1
    second = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="next offer running")[0]
    assert first in vast.destroyed and vast.instances[second]["machine_id"] == 502
    assert vast_creates(vast) == ["/api/v0/asks/1/", "/api/v0/asks/2/"]
    ended = job.reg.launches(job.job_id)[0]
    assert ended.machine_id == "501" and "failed to start" in (ended.end_reason or "")
    assert "unknown" in (ended.end_reason or "") and "vast/machine/501" in job.reg.blocked(job.job_id)
    job.succeeded(step=1)
    assert job.join() == 0 and vast.live_instances() == []
    assert job.states() == ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]  # one walk, no restart
    assert job.reg.get(job.job_id).restarts == 0


def test_vast_invalid_args_fails_the_job_at_once_without_walking(tmp_path, s3, vast, capsys):
    vast.fail_next("PUT", r"^/api/v0/asks/", 400, {"success": False, "error": "invalid_args",
                                                   "msg": "error 400/3467: Invalid args: bad image_login"})  # fmt: skip
    job = Job(tmp_path, s3, "vast", "vr-1")
    assert job.join() == 1
    assert vast_creates(vast) == ["/api/v0/asks/1/"]  # offers 2 and 3 were never tried
    assert vast.live_instances() == [] and job.state() == "FAILED"
    assert job.states() == ["PENDING", "STARTING", "FAILED"]
    reason = job.reg.last_reason(job.job_id)
    assert "refused the request" in reason and "Invalid args: bad image_login" in reason
    assert "Invalid args: bad image_login" in capsys.readouterr().err


def test_vast_lost_create_answer_is_adopted_never_created_twice(tmp_path, s3, vast):
    vast.fail_next("PUT", r"^/api/v0/asks/", 0, drop=True, after=True)  # created, then the answer is lost
    job = Job(tmp_path, s3, "vast", "va-1")
    iid = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="adopted instance running")[0]
    assert vast_creates(vast) == ["/api/v0/asks/1/"] and vast.live_instances() == [iid]
    assert vast.calls("GET", r"^/api/v1/instances/$")  # looked up by its label
    assert [x.instance_id for x in job.reg.launches(job.job_id)] == [str(iid)]
    job.succeeded(step=1)
    assert job.join() == 0 and vast.destroyed == [iid]


def test_vast_training_error_fails_without_relaunch(tmp_path, s3, vast):
    job = Job(tmp_path, s3, "vast", "vt-1")
    iid = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="instance running")[0]
    job.failed("ValueError: bad record 17")
    vast.host.exit(str(iid), 1)
    assert job.join() == 1
    assert job.state() == "FAILED" and vast.live_instances() == []
    assert vast_creates(vast) == ["/api/v0/asks/1/"]
    assert "RECOVERING" not in job.states() and job.reg.get(job.job_id).restarts == 0
    reason = job.reg.last_reason(job.job_id)
    assert "training error, not relaunched" in reason and "stage 'train' failed (exit 1)" in reason
    assert "bad record 17" in reason


def test_vast_max_cost_stops_the_instance_waits_for_its_checkpoint_then_destroys(tmp_path, s3, vast):
    """An interruptible bid of $0.176/h (the $0.16 min_bid of the $0.40/h offer + 10%) against a $0.0002 cap: the
    warning at 80% (3.3 s), then at the cap (4.1 s) the documented stop call
    (PUT /instances/{id}/ state=stopped; the host sends the container SIGTERM), the checkpoint the container
    commits on it, the destroy, and STOPPED_BUDGET with that checkpoint named. Nothing is relaunched."""
    job = Job(tmp_path, s3, "vast", "vb-1", "--max_cost", "0.0002")
    iid = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="instance running")[0]
    job.running(step=2, instance=iid)
    stop = wait_for(lambda: vast.calls("PUT", rf"^/api/v0/instances/{iid}/$"), timeout=30, what="stop call")
    assert stop[0].body == {"state": "stopped"}
    assert iid in vast.instances and vast.destroyed == [], "destroyed before the container could save"
    job.running(step=3, instance=iid)  # what the trainer commits on SIGTERM
    assert job.join(30) == 1
    assert job.state() == "STOPPED_BUDGET" and vast.destroyed == [iid] and vast.live_instances() == []
    assert vast_creates(vast) == ["/api/v0/asks/1/"]
    reason = job.reg.last_reason(job.job_id)
    assert "max_cost $0.0002 reached" in reason and "last committed checkpoint: step 3" in reason, reason
    assert job.reg.get(job.job_id).last_step == 3
    warnings = [e.reason for e in job.reg.events(job.job_id) if (e.reason or "").startswith("budget warning")]
    assert len(warnings) == 1 and "of max_cost $0.0002" in warnings[0], warnings


def test_vast_destroy_answering_success_false_is_retried_and_never_counted(tmp_path, s3, vast):
    """The controller API directly, with a sleep that records its waits (destroy backs off 1, 2, 4, 8 s)."""
    store = RunStore(RunLayout.of(s3.uri("runs"), "run-vd"), s3.endpoint_url)
    reg = Registry(tmp_path / "runs")
    reg.claim("vd-1", "vast", managed=True, run_uri=store.layout.root)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        time.sleep(min(s, 0.02))

    def controller() -> Controller:
        request = LaunchRequest(name="vd-1", image="registry.example/qa:1", env={ENV_SPEC_URI: store.layout.spec},
                                disk_gb=20, interruptible=True)  # fmt: skip
        return Controller(reg, "vd-1", computes={"vast": get_compute("vast", retries=1, backoff=0.01)},
                          request=request, query=OfferQuery(get_profile("a6000"), 1, interruptible=True),
                          policy=RecoveryPolicy(ready_timeout_s=60), reports=store, poll_s=0.05, sleep=sleep,
                          echo=lambda s: None)  # fmt: skip

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["state"] = controller().run()
        except CloudError as e:
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    iid = wait_for(lambda: reg.get("vd-1").state == JobState.RUNNING and live_vast(vast), what="running")[0]
    vast.refuse_destroy.add(iid)  # every DELETE answers 200 {"success": false}
    store.write_report(RunReport("run-vd", RunState.SUCCEEDED, [StageResult("train", 0)]))
    t.join(30)
    error = str(outcome.get("error"))
    assert "could not destroy instance" in error and "destroy it by hand" in error
    deletes = vast.calls("DELETE", rf"^/api/v0/instances/{iid}/$")
    assert len(deletes) == 5 and [s for s in slept if s >= 1] == [1, 2, 4, 8]
    assert iid in vast.instances and vast.destroyed == []  # still billing: so still recorded as live
    assert [x.instance_id for x in reg.open_launches("vd-1")] == [str(iid)]
    assert reg.get("vd-1").state == JobState.RUNNING  # not SUCCEEDED while something may bill
    # the cloud recovers; one more refusal is retried, then the instance is gone and only then counted
    vast.refuse_destroy.clear()
    vast.fail_next("DELETE", r"^/api/v0/instances/", 200, {"success": False, "msg": "try again later"})
    assert controller().run() == JobState.SUCCEEDED
    assert len(vast.calls("DELETE", rf"^/api/v0/instances/{iid}/$")) == 7 and vast.destroyed == [iid]
    assert reg.open_launches("vd-1") == [] and len(vast_creates(vast)) == 1


# -- RunPod ----------------------------------------------------------------------------------------------------
def test_runpod_restarted_container_with_a_succeeded_report_ends_succeeded(tmp_path, s3, runpod):
    job = Job(tmp_path, s3, "runpod", "rs-1")
    pod = wait_for(lambda: job.state() == "RUNNING" and running_pods(runpod), what="pod running")[0]
    runpod.host.exit(pod, 0)  # the run ended; RunPod starts it again, desiredStatus stays RUNNING
    wait_for(lambda: runpod.host.containers[pod].starts == 2, what="RunPod to restart the container")
    assert job.state() == "RUNNING"  # a restarted container is neither a loss nor a success
    job.succeeded(step=5)
    assert job.join() == 0
    assert job.state() == "SUCCEEDED" and runpod.terminated == [pod] and runpod.live_pods() == []
    assert len(runpod_deploys(runpod)) == 1 and "RECOVERING" not in job.states()


def test_runpod_relaunch_records_each_pods_machine(tmp_path, s3, runpod):
    """RunPod offers are GPU types: the machine is known only from the pod, and RunPod picks the next one."""
    job = Job(tmp_path, s3, "runpod", "rp-1")
    first = wait_for(lambda: job.state() == "RUNNING" and running_pods(runpod), what="pod running")[0]
    m1 = runpod.pods[first]["machineId"]
    wait_for(lambda: job.reg.launches(job.job_id)[0].machine_id == m1, what="machine of launch 1 recorded")
    runpod.preempt(first)  # an interruptible pod reclaimed by its host
    second = wait_for(lambda: [p for p in running_pods(runpod) if p != first] if job.state() == "RUNNING" else None,
                      what="relaunched pod")[0]  # fmt: skip
    m2 = runpod.pods[second]["machineId"]
    wait_for(lambda: job.reg.launches(job.job_id)[-1].machine_id == m2, what="machine of launch 2 recorded")
    assert f"runpod/machine/{m1}" in job.reg.blocked(job.job_id) and m1 != m2
    job.succeeded(step=2, launch=2)
    assert job.join() == 0 and runpod.terminated == [first, second]
    assert [x.machine_id for x in job.reg.launches(job.job_id)] == [m1, m2]


def test_runpod_no_capacity_backs_off_until_capacity_returns(tmp_path, s3, runpod):
    runpod.no_capacity(GPU_ID)  # lowestPrice.stockStatus: "None"
    runpod.fail_next("POST", r"^/graphql$", 200, {"errors": [{"message": NO_CAPACITY, "extensions":
                     {"code": "INTERNAL_SERVER_ERROR"}}], "data": None}, match_body="podRentInterruptable")  # fmt: skip
    job = Job(tmp_path, s3, "runpod", "nc-1")
    searches = lambda: [op for op, _ in runpod.operations() if op == "gpuTypes"]  # noqa: E731
    wait_for(lambda: len(searches()) >= 2, what="a second search after the backoff")
    assert runpod_deploys(runpod) == [] and job.state() == "STARTING"
    with runpod.lock:
        runpod.gpu_types[GPU_ID]["_stock"] = "Low"  # in stock again; the first deploy still finds none
    pod = wait_for(lambda: job.state() == "RUNNING" and running_pods(runpod), what="pod running")[0]
    assert len(runpod_deploys(runpod)) == 2 and runpod.live_pods() == [pod]
    job.succeeded(step=1)
    assert job.join() == 0 and runpod.live_pods() == []
    assert job.states() == ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]


# -- process boundaries: a detached controller, killed and resumed; status/list/cancel from another shell -----
def _detached_running(tmp_path: Path, s3: Any, vast: VastDouble, job_id: str, capsys) -> tuple[Job, int, int]:
    """Submit with --detach (the controller becomes a background process); wait until its instance runs.
    Returns (job, controller pid, instance id)."""
    job = Job(tmp_path, s3, "vast", job_id, start=False)
    assert job.cli(*job.argv, "--detach") == 0
    pid = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["controller_pid"]
    try:
        iid = wait_for(lambda: job.state() == "RUNNING" and live_vast(vast), what="detached job running")[0]
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
        raise
    return job, pid, iid


def _reap(pid: int, timeout: float = 20.0) -> None:
    """Wait for our child controller to exit (a zombie would still count as a live lease holder)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"controller pid {pid} did not exit")


def test_killed_controller_resumes_without_a_second_instance(tmp_path, s3, vast, capsys):
    job, pid, iid = _detached_running(tmp_path, s3, vast, "kr-1", capsys)
    job.running(step=2, instance=iid)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    assert vast.live_instances() == [iid]  # the job runs on, unwatched
    assert job.cli(*job.argv) == 0 and "already submitted" in capsys.readouterr().out  # same id: nothing new
    job.thread = threading.Thread(target=job._run, args=(["resume", job.job_id],), daemon=True)
    job.thread.start()
    wait_for(lambda: "re-attached to vast instance" in capsys.readouterr().out, what="re-attach")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dup = subprocess.run([sys.executable, "launch/submit.py", "resume", job.job_id], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert dup.returncode == 1 and "already watched by controller" in dup.stderr
    job.succeeded(step=4)
    assert job.join() == 0 and job.state() == "SUCCEEDED"
    assert vast_creates(vast) == ["/api/v0/asks/1/"] and vast.live_instances() == []
    assert len(job.reg.launches(job.job_id)) == 1 and job.reg.get(job.job_id).last_step == 4


def test_detached_controller_with_status_list_and_cancel_from_another_shell(tmp_path, s3, vast, capsys):
    job, pid, iid = _detached_running(tmp_path, s3, vast, "dt-1", capsys)
    try:
        job.running(step=3, instance=iid)
        assert job.cli("status", job.job_id, "--json") == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["state"] == "RUNNING" and doc["controller_pid"] == pid and doc["instance_id"] == str(iid)
        assert doc["report"]["last_committed_step"] == 3
        assert job.cli("list", "--as_json") == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert row["managed"] and row["restarts"] == 0 and row["cost_usd"] >= 0
        assert job.cli("cancel", job.job_id) == 0
        assert f"cancelled {job.job_id} (vast instance {iid})" in capsys.readouterr().out
        _reap(pid)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert vast.live_instances() == [] and job.state() == "CANCELLED"
    assert vast_creates(vast) == ["/api/v0/asks/1/"]  # the vanished instance was not taken for a preemption
    log = (job.runs / job.job_id / "controller.log").read_text()
    assert "cancelled" in log and VAST_KEY not in log and s3.server.secret_key not in log


# -- the doubles themselves ------------------------------------------------------------------------------------
def test_a_client_hanging_up_mid_answer_prints_no_traceback(capsys):
    class Big(ApiDouble):
        def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
            time.sleep(0.1)  # the client is gone by now
            return Reply(200, "x" * (8 << 20), "text/plain")

    with Big("k") as d:
        host, port = d._server.server_address[:2]
        for _ in range(3):
            s = socket.create_connection((host, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            s.close()
        wait_for(lambda: len(d.requests) == 3, what="three requests")
        time.sleep(0.5)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err and "BrokenPipeError" not in err
