"""Managed jobs: a small controller that keeps one job alive across preemptions until it succeeds or fails.

Why: interruptible GPUs cost a fraction of on-demand ones, but only a job that recovers by itself can use them
for a long run. The controller polls the job's instance; when the instance is lost (preempted, stopped while we
did not ask, provisioning error, container killed) it saves the logs, destroys what is left, picks the next
offer (cheapest first, skipping machines that failed this job) and relaunches the same rendered spec: same
job id, same run name, so the container resumes from the newest committed checkpoint in object storage.
A non-zero exit of our own code is a training error: the job FAILS, it is never relaunched.

States (``jobs.state`` of the registry, each change also an event with time and reason)::

    PENDING → STARTING → RUNNING → RECOVERING → RUNNING … → SUCCEEDED | FAILED | CANCELLED

The registry is the source of truth: a killed controller is restarted with ``submit.py resume JOB_ID``; it
re-attaches to the live instance it finds recorded (or, for vast/local, labelled with the job id) instead of
creating a second one. A lease (pid + host + heartbeat) keeps two controllers off one job.

Import-light: standard library, the backends, boto3 (object storage listing); never torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from launch.backends.base import Backend, BackendError, Instance, NoCapacity, Offer, Status
from launch.gpus import get_profile
from launch.registry import TERMINAL, Registry
from qa_train.spec import RenderedSpec

logger = logging.getLogger("launch.managed")
KILL_EXIT_CODES = (
    137,
    143,
)  # SIGKILL / SIGTERM from outside: docker kill, a host shutting the container down
_STEP_RE = re.compile(r"(?:Committed|Resuming from)\s+\S*?checkpoint-(\d+)")
_STAGE_ERR_RE = re.compile(r"error: (stage '[^']+' failed \(exit -?\d+\)|invalid job spec)")


class ManagedError(RuntimeError):
    """A managed-job operation that cannot proceed (e.g. another controller holds the job)."""


class _Cancelled(Exception):
    """Raised inside the backend's create (from ``on_created``) so it destroys the instance it just made."""


@dataclass
class ManagedOptions:
    """Everything a controller needs besides the spec and secrets; saved in the registry (no secrets)."""

    backend: str = "cheapest"  # as asked: local | vast | runpod | cheapest
    interruptible: bool = False
    max_price: float | None = None
    max_restarts: int = 3
    poll_s: float = 10.0
    ready_timeout_s: float = 1800.0  # readiness deadline of each launch
    backoff_s: float = 30.0  # first wait when no capacity; doubles up to backoff_max_s
    backoff_max_s: float = 600.0
    capacity_wait_s: float = 6 * 3600.0  # give up (FAILED) after waiting this long for capacity
    step_every_s: float = 30.0  # how often the last committed step is refreshed while running
    data_dir: str | None = None  # local backend: host folder mounted read-only at /data
    network: str | None = None  # local backend: docker network mode
    env_file: str | None = None  # where secrets were read from (a path, never the values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManagedOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Verdict:
    kind: str  # running | pending | succeeded | training_error | lost
    reason: str


def run_outcome(lines: list[str]) -> tuple[bool | None, str]:
    """What the container's ``qa_train run`` said about itself: (True, …) ok, (False, why) failed, (None, '')
    when it never got to say (killed, machine lost). Reads the final JSON summary line or ``error: stage`` lines."""
    for line in reversed(lines):
        i = line.find('{"ok":')
        if i >= 0:
            try:
                doc = json.loads(line[i:])
            except ValueError:
                continue
            if doc.get("ok") is True:
                return True, "the run reported success"
            bad = [s for s in doc.get("stages") or [] if s.get("exit_code")]
            if bad:
                return False, f"stage '{bad[-1].get('stage')}' failed (exit {bad[-1].get('exit_code')})"
            return False, "the run reported failure"
        m = _STAGE_ERR_RE.search(line)
        if m:
            return False, m.group(1)
    return None, ""


def judge(status: Status, log_lines: list[str] | None = None) -> Verdict:
    """Sort an instance state into running / succeeded / training error / lost (→ relaunch)."""
    raw = status.raw or {}
    if status.state == "RUNNING":
        # vast: a preemption shows in intended/next state before actual_status follows; we never ask to stop
        wanted = [raw.get(k) for k in ("intended_status", "cur_state", "next_state")]
        if "stopped" in wanted:
            return Verdict("lost", f"being stopped while we did not ask ({_vast_states(raw)})")
        return Verdict("running", status.detail)
    if status.state == "PENDING":
        return Verdict("pending", status.detail)
    if status.state == "STOPPED":
        extra = f" ({_vast_states(raw)})" if "intended_status" in raw else ""
        return Verdict("lost", f"instance stopped while we did not ask: {status.detail}{extra}")
    if status.state == "FAILED":
        return Verdict("lost", f"instance failed: {status.detail}")
    if status.state == "GONE":
        return Verdict("lost", f"instance gone: {status.detail}")
    # EXITED
    code = status.exit_code
    if code is not None:
        if code == 0:
            return Verdict("succeeded", "container exited with code 0")
        if code in KILL_EXIT_CODES or raw.get("OOMKilled"):
            why = "OOM-killed" if raw.get("OOMKilled") else f"killed by signal {code - 128}"
            return Verdict("lost", f"container {why} (exit {code})")
        ok, why = run_outcome(log_lines or [])
        return Verdict("training_error", f"exit code {code}" + (f": {why}" if why else ""))
    ok, why = run_outcome(log_lines or [])  # clouds that give no exit code: the run's own last words decide
    if ok is True:
        return Verdict("succeeded", why)
    if ok is False:
        return Verdict("training_error", why)
    return Verdict(
        "lost", f"container exited without a run summary (killed or machine lost): {status.detail}"
    )


def _vast_states(raw: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={raw.get(k)}"
        for k in ("actual_status", "intended_status", "cur_state", "next_state")
        if k in raw
    )


def step_from_logs(lines: list[str]) -> int | None:
    """Newest checkpoint step named by ``Committed …/checkpoint-N`` or ``Resuming from checkpoint-N`` lines."""
    steps = [int(m.group(1)) for line in lines for m in _STEP_RE.finditer(line)]
    return max(steps) if steps else None


# -- object storage (boto3 only) -----------------------------------------------------------------------------
def s3_client(endpoint_url: str | None, secrets: dict[str, str], attempts: int = 3) -> Any:
    """A short-timeout client: the controller must not hang on a storage outage."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=secrets.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=secrets.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=secrets.get("AWS_SESSION_TOKEN") or None,
    )
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=5,
        read_timeout=20,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    return session.client(
        "s3", endpoint_url=endpoint or None, region_name=session.region_name or "us-east-1", config=config
    )


def run_location(spec: RenderedSpec) -> str | None:
    """``s3://…/<run_name>`` where the container syncs this run, or None without a sync target."""
    if spec.job.sync is None:
        return None
    return f"{spec.job.sync.target.rstrip('/')}/{spec.job.run_name}"


def storage_endpoint(spec: RenderedSpec) -> str | None:
    if spec.job.sync and spec.job.sync.endpoint_url:
        return spec.job.sync.endpoint_url
    return spec.env.get("AWS_ENDPOINT_URL")


def remote_folders(spec: RenderedSpec, secrets: dict[str, str]) -> list[Any]:
    """The run's folders in object storage (checkpoints, final, merged, eval) with their committed flag."""
    from qa_train.sync.remote import list_run
    from qa_train.sync.storage import S3Location

    uri = run_location(spec)
    if uri is None:
        return []
    return list_run(s3_client(storage_endpoint(spec), secrets), S3Location.parse(uri))


def committed_step(spec: RenderedSpec, secrets: dict[str, str]) -> int | None:
    steps = [f.step for f in remote_folders(spec, secrets) if f.step is not None and f.committed]
    return max(steps) if steps else None


def expected_artifacts(spec: RenderedSpec) -> dict[str, str]:
    """Folder name in object storage → what it holds, for the stages this job runs."""
    stages = spec.job.stages or []
    out = {}
    if "train" in stages:
        out["final"] = "final model" + (" (adapter)" if spec.job.use_lora else "")
    if "merge" in stages:
        out["merged"] = "merged model"
    if "eval" in stages:
        out["eval"] = "eval summary + predictions"
    return out


# -- the controller ------------------------------------------------------------------------------------------
def make_backend(opts: ManagedOptions, job_id: str, runs_root: Path) -> Backend:
    from launch.backends import get_backend

    kw: dict[str, Any] = {"poll_s": min(opts.poll_s, 5.0), "ready_timeout_s": opts.ready_timeout_s}
    if opts.backend == "local":
        # no runs mount: each launch starts on a fresh filesystem, like a new cloud machine, and resumes
        # from object storage; outputs live there
        kw.update(data_dir=opts.data_dir, runs_dir=None, network_mode=opts.network)
    return get_backend(opts.backend, **kw)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Controller:
    """Drive one managed job to a terminal state. ``run()`` returns that state."""

    def __init__(
        self,
        registry: Registry,
        job_id: str,
        spec: RenderedSpec,
        secrets: dict[str, str],
        opts: ManagedOptions,
        *,
        backend: Backend | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        echo: Callable[[str], None] | None = None,
    ):
        self.reg = registry
        self.job_id = job_id
        self.spec = spec
        self.secrets = secrets
        self.opts = opts
        self.job_dir = registry.root / job_id
        self.be = backend or make_backend(opts, job_id, registry.root)
        self.clouds: dict[str, Backend] = dict(getattr(self.be, "backends", None) or {self.be.name: self.be})
        self.sleep = sleep
        self.clock = clock
        self.echo = echo or (lambda s: print(s, flush=True))
        self._last_step_check = 0.0

    # -- registry helpers ------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        row = self.reg.get(self.job_id)
        return row.info if row else {}

    def _state(self) -> str:
        row = self.reg.get(self.job_id)
        return row.state if row else "FAILED"

    def _cancel_requested(self) -> bool:
        return self._state() == "CANCELLED"

    def _to(self, state: str, reason: str) -> bool:
        """Record a transition unless the user cancelled meanwhile (cancel always wins)."""
        ok = self.reg.set_state_unless(self.job_id, state, reason, unless=("CANCELLED",))
        if ok:
            self.echo(f"[managed] {self.job_id}: {state} — {reason}")
        return ok

    def _note(self, reason: str) -> None:
        logger.info("%s: %s", self.job_id, reason)
        self.echo(f"[managed] {self.job_id}: {reason}")

    def _heartbeat(self) -> None:
        self.reg.update(self.job_id, controller_heartbeat=self.clock())

    # -- lease ------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Refuse to run next to a live controller of the same job (that is how double launches happen)."""
        info = self._info()
        pid, host = info.get("controller_pid"), info.get("controller_host")
        if pid and pid != os.getpid() and host == socket.gethostname() and _pid_alive(int(pid)):
            raise ManagedError(
                f"job {self.job_id} is already watched by controller pid {pid} on {host}; "
                "stop it first (or wait for it to exit)"
            )
        if pid and host and host != socket.gethostname():
            beat = float(info.get("controller_heartbeat") or 0)
            if self.clock() - beat < max(60.0, 5 * self.opts.poll_s):
                raise ManagedError(
                    f"job {self.job_id} is watched by controller pid {pid} on {host} (heartbeat "
                    f"{self.clock() - beat:.0f}s ago)"
                )
        self.reg.update(
            self.job_id,
            controller_pid=os.getpid(),
            controller_host=socket.gethostname(),
            controller_heartbeat=self.clock(),
        )

    def release(self) -> None:
        if self._info().get("controller_pid") == os.getpid():
            self.reg.update(self.job_id, controller_pid=None, controller_heartbeat=self.clock())

    # -- main loop --------------------------------------------------------------------------------------
    def run(self) -> str:
        self.acquire()
        try:
            return self._loop()
        finally:
            self.release()

    def _loop(self) -> str:
        row = self.reg.get(self.job_id)
        if row is None:
            raise ManagedError(f"no job {self.job_id!r} in {self.reg.path}")
        if row.state in TERMINAL:
            self._note(f"already {row.state}: {self.reg.events(self.job_id)[-1]['reason']}")
            return row.state
        inst = self._reattach(row)
        if inst is None and row.state == "PENDING":
            self._to("STARTING", "launching the first instance")
        while True:
            if self._cancel_requested():
                return self._finish_cancelled(inst)
            if inst is None:
                inst = self._launch()
                if inst is None:
                    return self._finish_cancelled(None) if self._cancel_requested() else self._state()
                self._to("RUNNING", f"{inst.backend} instance {inst.instance_id} is running")
            st = self._status(inst)
            if st is None:
                self.sleep(self.opts.poll_s)
                continue
            lines = None
            if st.state == "EXITED" and (st.exit_code is None or st.exit_code not in (0, *KILL_EXIT_CODES)):
                lines = self._log_tail(inst)
            v = judge(st, lines)
            if v.kind in ("running", "pending"):
                self._heartbeat()
                self._maybe_update_step(inst)
                self.sleep(self.opts.poll_s)
                continue
            if self._cancel_requested():
                return self._finish_cancelled(inst)
            if v.kind == "succeeded":
                return self._finish_succeeded(inst, v.reason)
            if v.kind == "training_error":
                self._retire(inst, f"training error: {v.reason}")
                self._update_step(None)
                self._to("FAILED", f"training error, not relaunched: {v.reason}")
                return "FAILED"
            # lost: preempted / machine failure → relaunch unless out of restarts
            self._retire(inst, v.reason, failed_machine=True)
            self._update_step(None)
            restarts = int(self._info().get("restarts") or 0)
            if restarts >= self.opts.max_restarts:
                self._to("FAILED", f"max_restarts ({self.opts.max_restarts}) reached; last: {v.reason}")
                return "FAILED"
            self.reg.update(self.job_id, restarts=restarts + 1)
            if not self._to("RECOVERING", f"restart {restarts + 1}/{self.opts.max_restarts}: {v.reason}"):
                return self._finish_cancelled(None)
            inst = None

    # -- attach / launch --------------------------------------------------------------------------------
    def _open_launch(self) -> dict[str, Any] | None:
        open_ = [r for r in self.reg.launches(self.job_id) if r["ended_at"] is None]
        return open_[-1] if open_ else None

    def _reattach(self, row: Any) -> Instance | None:
        """The registry's live instance of this job (or one labelled with the job id): never create twice."""
        cur = self._open_launch()
        if cur is not None:
            # whatever its state (even unknown during an API outage), the loop judges it like any instance
            inst = Instance(cur["backend"], cur["instance_id"], None)
            st = self._status(inst)
            seen = st.state.lower() if st else "state unknown"
            self._note(f"re-attached to {inst.backend} instance {inst.instance_id} ({seen})")
            if (
                st is not None
                and st.state == "RUNNING"
                and row.state in ("PENDING", "STARTING", "RECOVERING")
            ):
                self._to("RUNNING", f"{inst.backend} instance {inst.instance_id} is running (re-attached)")
            return inst
        # an instance created just before a controller died, before it was recorded
        for name, be in self.clouds.items():
            finder = getattr(be, "find_by_label", None) or getattr(be, "find_by_job", None)
            if finder is None:
                continue
            try:
                found = [str(i) for i in finder(self.job_id)]
            except Exception as e:  # an API hiccup must not turn into a second launch: fail loudly instead
                raise ManagedError(f"cannot list {name} instances of {self.job_id} to re-attach: {e}") from e
            known = {r["instance_id"] for r in self.reg.launches(self.job_id)}
            for iid in found:
                if iid in known:  # an ended launch that is still there: finish destroying it
                    self._destroy(Instance(name, iid, None))
                    continue
                self.reg.add_launch(self.job_id, backend=name, instance_id=iid)
                self._note(f"adopted unrecorded {name} instance {iid} labelled with the job id")
                return Instance(name, iid, None)
        return None

    def _failed_keys(self) -> set[str]:
        return set(self._info().get("failed_machines") or [])

    @staticmethod
    def _offer_keys(o: Offer) -> set[str]:
        keys = {f"{o.backend}/offer/{o.offer_id}"}
        mid = (o.extra or {}).get("machine_id")
        if mid is not None:
            keys.add(f"{o.backend}/machine/{mid}")
        return keys

    def _on_created(self, inst: Instance) -> None:
        o = inst.offer
        mid = (o.extra or {}).get("machine_id") if o else None
        n = self.reg.add_launch(
            self.job_id,
            backend=inst.backend,
            instance_id=inst.instance_id,
            offer_id=o.offer_id if o else None,
            machine_id=str(mid) if mid is not None else None,
            price_per_hour=o.price_per_hour if o else None,
        )
        price = f" at ${o.price_per_hour:.3f}/h" if o and o.price_per_hour else ""
        self._note(
            f"launch {n}: {inst.backend} instance {inst.instance_id}"
            + (f" on offer {o.offer_id}" if o else "")
            + price
        )
        if self._cancel_requested():
            raise _Cancelled()

    def _try_launch(self) -> Instance:
        if self.be.name == "local":
            return self.be.create(self.spec, self.secrets, on_created=self._on_created)
        profile = get_profile(self.spec.gpu.profile)
        offers = self.be.offers(
            profile,
            self.spec.gpu.count,
            interruptible=self.opts.interruptible,
            max_price=self.opts.max_price,
            disk_gb=self.spec.disk_gb,
        )
        failed = self._failed_keys()
        fresh = [o for o in offers if not (self._offer_keys(o) & failed)]
        if offers and not fresh:
            self._note("only offers on machines that already failed this job are left; trying them again")
            fresh = offers
        if not fresh:
            raise NoCapacity(f"no offers for {self.spec.gpu.count}x {profile.display}")
        reasons = []
        for cloud in dict.fromkeys(o.backend for o in fresh):  # clouds in order of their cheapest offer
            mine = [o for o in fresh if o.backend == cloud]
            try:
                return self.clouds[cloud].create(  # type: ignore[call-arg]
                    self.spec,
                    self.secrets,
                    interruptible=self.opts.interruptible,
                    max_price=self.opts.max_price,
                    on_created=self._on_created,
                    offers=mine,
                )
            except BackendError as e:
                reasons.append(str(e))
        raise NoCapacity(" | ".join(reasons))

    def _launch(self) -> Instance | None:
        """Create an instance; on no capacity wait with exponential backoff. None: cancelled or gave up."""
        from launch.backends.transport import ApiError

        delay, started = self.opts.backoff_s, self.clock()
        while True:
            if self._cancel_requested():
                return None
            try:
                inst = self._try_launch()
            except _Cancelled:
                return None
            except (BackendError, ApiError) as e:
                # the backends destroy whatever they created before raising: nothing to clean up here
                for r in self.reg.launches(self.job_id):
                    if r["ended_at"] is None:
                        self.reg.end_launch(self.job_id, r["instance_id"], f"failed to start: {e}")
                if self.clock() - started + delay > self.opts.capacity_wait_s:
                    self._to("FAILED", f"no capacity after {self.clock() - started:.0f}s: {e}")
                    return None
                self._note(f"launch failed ({e}); retrying in {delay:.0f}s")
                if not self._sleep_unless_cancelled(delay):
                    return None
                delay = min(delay * 2, self.opts.backoff_max_s)
                continue
            if self._cancel_requested():
                self._retire(inst, "cancelled by user")
                return None
            self._heartbeat()
            return inst

    def _sleep_unless_cancelled(self, seconds: float) -> bool:
        end = self.clock() + seconds
        while self.clock() < end:
            if self._cancel_requested():
                return False
            self.sleep(min(max(self.opts.poll_s, 0.01), max(end - self.clock(), 0.0)))
        return not self._cancel_requested()

    # -- instance helpers -------------------------------------------------------------------------------
    def _status(self, inst: Instance) -> Status | None:
        try:
            return self.clouds[inst.backend].status(inst.instance_id)
        except Exception as e:  # an API outage is not a preemption: never relaunch on it, keep polling
            logger.warning("%s: status of %s failed: %s", self.job_id, inst.instance_id, e)
            return None

    def _log_tail(self, inst: Instance, tail: int = 400) -> list[str] | None:
        try:
            return list(self.clouds[inst.backend].logs(inst.instance_id, follow=False, tail=tail))
        except Exception as e:
            logger.warning("%s: logs of %s unavailable: %s", self.job_id, inst.instance_id, e)
            return None

    def _save_logs(self, inst: Instance, lines: list[str] | None) -> None:
        if not lines:
            return
        n = next((r["n"] for r in self.reg.launches(self.job_id) if r["instance_id"] == inst.instance_id), 0)
        path = self.job_dir / "logs" / f"launch-{n}-{inst.backend}-{inst.instance_id}.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
        except OSError as e:
            logger.warning("could not save logs to %s: %s", path, e)

    def _destroy(self, inst: Instance) -> None:
        for attempt in range(5):
            try:
                self.clouds[inst.backend].cancel(inst.instance_id)
                return
            except Exception as e:  # keep trying: a leaked instance bills
                logger.warning("destroy %s (try %d): %s", inst.instance_id, attempt + 1, e)
                self.sleep(min(2.0**attempt, 30.0))
        raise ManagedError(
            f"could not destroy {inst.backend} instance {inst.instance_id}; destroy it by hand"
        )

    def _retire(self, inst: Instance, reason: str, failed_machine: bool = False) -> None:
        """Keep its logs, destroy it, close its launch (cost stops), remember its machine if it failed."""
        lines = self._log_tail(inst, tail=2000)
        self._save_logs(inst, lines)
        if lines:
            step = step_from_logs(lines)
            if step is not None:
                self.reg.update(
                    self.job_id, last_step_logs=max(step, int(self._info().get("last_step_logs") or 0))
                )
        self._destroy(inst)
        self.reg.end_launch(self.job_id, inst.instance_id, reason)
        if failed_machine:
            keys = self._failed_keys()
            cur = next(
                (r for r in self.reg.launches(self.job_id) if r["instance_id"] == inst.instance_id), None
            )
            if cur and cur["offer_id"]:
                keys.add(f"{inst.backend}/offer/{cur['offer_id']}")
            if cur and cur["machine_id"]:
                keys.add(f"{inst.backend}/machine/{cur['machine_id']}")
            self.reg.update(self.job_id, failed_machines=sorted(keys))

    def _maybe_update_step(self, inst: Instance) -> None:
        if self.clock() - self._last_step_check >= self.opts.step_every_s:
            self._last_step_check = self.clock()
            self._update_step(inst)

    def _update_step(self, inst: Instance | None) -> None:
        """Last committed step: object storage when the job syncs, else the container's log lines."""
        step, source = None, ""
        if run_location(self.spec):
            try:
                step, source = committed_step(self.spec, self.secrets), "object storage"
            except Exception as e:
                logger.warning("%s: cannot list %s: %s", self.job_id, run_location(self.spec), e)
        if step is None and inst is not None:
            lines = self._log_tail(inst)
            step, source = (step_from_logs(lines) if lines else None), "logs"
        if step is None:
            step, source = self._info().get("last_step_logs"), "logs"
        if step is not None:
            self.reg.update(self.job_id, last_step=step, last_step_source=source)

    # -- endings ----------------------------------------------------------------------------------------
    def _finish_cancelled(self, inst: Instance | None) -> str:
        cur = self._open_launch()
        todo = {i.instance_id: i for i in (inst,) if i is not None}
        if cur is not None:
            todo.setdefault(cur["instance_id"], Instance(cur["backend"], cur["instance_id"], None))
        for i in todo.values():
            self._retire(i, "cancelled by user")
        self._note("cancelled; no instance left")
        return "CANCELLED"

    def _finish_succeeded(self, inst: Instance, reason: str) -> str:
        self._retire(inst, "succeeded")
        self._update_step(None)
        where = self.artifacts()
        self.reg.update(self.job_id, artifacts=where)
        self._to("SUCCEEDED", reason)
        for line in _format_artifacts(where):
            self.echo(line)
        return "SUCCEEDED"

    def artifacts(self) -> dict[str, Any]:
        """Where the results are: each expected folder in object storage and whether it is committed."""
        uri = run_location(self.spec)
        want = expected_artifacts(self.spec)
        if uri is None:
            return {
                "location": None,
                "note": "the job has no sync target: outputs stayed on the (destroyed) instance; "
                "see the saved logs under " + str(self.job_dir / "logs"),
            }
        out: dict[str, Any] = {"location": uri, "folders": {}}
        try:
            found = {f.name: f for f in remote_folders(self.spec, self.secrets)}
        except Exception as e:
            out["error"] = f"cannot list {uri}: {e}"
            found = {}
        for name, what in want.items():
            f = found.get(name)
            out["folders"][name] = {
                "what": what,
                "uri": f"{uri}/{name}",
                "committed": bool(f and f.committed),
                "files": f.num_files if f else 0,
            }
        return out


def _format_artifacts(where: dict[str, Any]) -> list[str]:
    if not where.get("location"):
        return [f"[managed] {where.get('note')}"]
    lines = [f"[managed] artifacts in {where['location']}:"]
    for f in where.get("folders", {}).values():
        mark = "ok" if f["committed"] else "MISSING"
        lines.append(f"  {f['what']:<28} {f['uri']}  [{mark}, {f['files']} files]")
    if where.get("error"):
        lines.append(f"  ({where['error']})")
    lines.append(json.dumps({"artifacts": where}))
    return lines


def summary(reg: Registry, job_id: str, now: float | None = None) -> dict[str, Any]:
    """What ``list``/``status`` show for a managed job: state, restarts, cost so far, last committed step."""
    row = reg.get(job_id)
    if row is None:
        raise ManagedError(f"no job {job_id!r} in {reg.path}")
    launches = reg.launches(job_id)
    return {
        "job_id": job_id,
        "state": row.state,
        "restarts": int(row.info.get("restarts") or 0),
        "launches": len(launches),
        "cost_usd": round(reg.cost(job_id, now), 4),
        "last_step": row.info.get("last_step"),
        "last_step_source": row.info.get("last_step_source"),
        "backend": row.backend,
        "instance_id": row.instance_id,
        "controller_pid": row.info.get("controller_pid"),
    }
