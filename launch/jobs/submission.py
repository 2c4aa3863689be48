"""Submitting, launching and resuming a job: the steps between a rendered spec and a running instance.

Why here, beside the controller and not in the CLI: ``submit`` (managed or not), ``resume`` and the background
controller all take these steps in the same order with the same checks (everything checked before anything
is recorded or rented; the spec saved in one place; a failure recorded with its cause). The CLI only parses
flags and prints; these functions raise ``SubmitError`` (one line for people) and print through ``echo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.backends.base import CloudError
from launch.credentials import CONTAINER_SECRETS, load_secrets, redact
from launch.jobs.controller import ControllerError, RegistryHooks
from launch.jobs.lease import LeaseHeld
from launch.jobs.offers import Cancelled, Launched, OfferWalk
from launch.jobs.plan import JobPlan, PlanningError, check_storage, make_plan, spec_json
from launch.jobs.state import JobOptions, JobRow, JobState, Registry
from qa_train.contract import SPEC_NAME, FailureReason, RunReport
from qa_train.spec import RenderedSpec, parse_rendered

Echo = Callable[[str], None]
OUTPUTS = (
    "outputs"  # runs/<job>/outputs/: the local backend's host folder at /runs (QA_RUNS_DIR overrides it)
)
CONTAINER_UID = 1000  # the images' user (docker/Dockerfile*): it must be able to write the bound folder


class SubmitError(RuntimeError):
    """A step of submitting or controlling a job failed; printed as one ``error:`` line (exit status 1)."""


def job_dir(runs_root: str | Path, job_id: str) -> Path:
    """``runs/<job>/``: the saved spec, the controller's log, saved instance logs, local outputs."""
    return Path(runs_root) / job_id


def local_outputs(runs_root: str | Path, job_id: str) -> str:
    """The host folder a local job's container writes ``/runs`` into: ``QA_RUNS_DIR`` when set (compose's
    variable), else ``runs/<job>/outputs``. Bound by default so its report, metrics and model stay on the host
    and ``status`` / ``watch`` can read them."""
    return str(Path(os.environ.get("QA_RUNS_DIR") or job_dir(runs_root, job_id) / OUTPUTS).resolve())


def prepare_outputs(path: str) -> None:
    """Create the bound folder so the container's user can write it (it is not this user unless uid 1000)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if os.getuid() != CONTAINER_UID and folder.stat().st_uid == os.getuid():
        folder.chmod(0o777)


def prepare(rendered: RenderedSpec, secrets: dict[str, str], opts: JobOptions) -> JobPlan:
    """Everything checked before anything is recorded or rented: backend, storage, image, cloud keys."""
    try:
        plan = make_plan(rendered, secrets, opts)
        if plan.store is not None:
            check_storage(plan.store)
    except (PlanningError, CloudError) as e:
        raise SubmitError(str(e)) from None
    if opts.backend != "local":
        from launch import images

        try:
            images.check_image(rendered.image, plan.request.registry_auth)
        except images.ImageError as e:
            raise SubmitError(str(e)) from None
    return plan


def save_spec(reg: Registry, plan: JobPlan) -> None:
    """The one place ``spec.json`` is written: ``runs/<job>/spec.json`` (what ``resume``/``status`` read)
    and, for a job with object storage, ``<run>/spec.json`` (what the container reads) with a fresh run
    report, so a report left by an earlier job of the same run is never taken for this one's."""
    text = redact(spec_json(plan.spec), plan.secrets)
    out = job_dir(reg.root, plan.job_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_NAME).write_text(text)
    if plan.options.outputs_dir:
        prepare_outputs(plan.options.outputs_dir)
    if plan.store is not None:
        try:
            plan.store.put_text(SPEC_NAME, text)
            plan.store.write_report(RunReport(plan.spec.job.run_name, launch=0, backend=plan.options.backend))
        except Exception as e:
            reg.transition(
                plan.job_id, JobState.FAILED, f"cannot upload the spec: {e}", FailureReason.SETUP_ERROR
            )
            raise SubmitError(f"cannot upload {plan.store.layout.spec}: {e}") from None


def launch_once(reg: Registry, plan: JobPlan, echo: Echo) -> Launched:
    """Unmanaged: the one offer walk, once; the instance then runs (and stops itself) on its own."""
    hooks = RegistryHooks(reg, plan.job_id, echo)
    walk = OfferWalk(plan.computes, ready_timeout_s=plan.options.ready_timeout_s,
                     poll_s=min(plan.options.poll_s, 5.0), hooks=hooks)  # fmt: skip
    reg.transition(plan.job_id, JobState.STARTING, "walking the offers")
    try:
        got = walk.launch(plan.request, plan.query)
    except BaseException as e:  # the walk destroyed whatever it rented before raising
        why = redact(str(e) or type(e).__name__, plan.secrets)
        reg.transition(plan.job_id, JobState.FAILED, why, FailureReason.LAUNCH_FAILED)
        if isinstance(e, CloudError | Cancelled):
            raise SubmitError(redact(str(e), plan.secrets)) from None
        raise
    reg.transition(plan.job_id, JobState.RUNNING, f"{got.backend} instance {got.instance_id} started")
    return got


def job_plan(reg: Registry, row: JobRow, *, computes: bool = True) -> JobPlan:
    """A recorded job's plan again: its saved spec, its options, and the secrets set now."""
    spec_path = job_dir(reg.root, row.job_id) / SPEC_NAME
    try:
        rendered = parse_rendered(json.loads(spec_path.read_text()), str(spec_path))
    except (OSError, ValueError) as e:
        raise SubmitError(f"{spec_path}: cannot read the job's rendered spec: {e}") from None
    secrets = load_secrets(CONTAINER_SECRETS, env_file=row.options.env_file)
    missing = [n for n in rendered.secret_env if n not in secrets]
    if missing:
        raise SubmitError(
            f"job {row.job_id} was submitted with secrets {', '.join(missing)} that are not set now "
            "(set them in the environment or in the --env_file it was submitted with)"
        )
    try:
        return make_plan(rendered, secrets, row.options, None if computes else {})
    except (PlanningError, CloudError) as e:
        raise SubmitError(str(e)) from None


def run_controller(reg: Registry, plan: JobPlan, echo: Echo) -> JobState:
    """Stay attached as the job's controller until it ends; returns the final state. ``KeyboardInterrupt``
    passes through (the job keeps running unwatched; the caller says how to re-attach)."""
    from launch.jobs.controller import controller_for

    ctl = controller_for(reg, plan, job_dir(reg.root, plan.job_id) / "logs",
                         echo=lambda s: echo(redact(s, plan.secrets)))  # fmt: skip
    try:
        return ctl.run()
    except (LeaseHeld, ControllerError) as e:
        raise SubmitError(str(e)) from None
    except CloudError as e:  # e.g. a destroy that never worked: say so, the job stays as recorded
        raise SubmitError(f"job {plan.job_id}: controller stopped: {e}") from None


@dataclass(frozen=True)
class Spawned:
    pid: int
    log: Path


def spawn_controller(runs_root: str | Path, job_id: str) -> Spawned:
    """The same controller as a background process (own session: closing this shell does not stop it),
    started through the module (``python -m launch resume JOB``), so an installed launcher and a checkout
    start the same code; the package's own folder leads ``PYTHONPATH`` for a checkout that is not installed."""
    import launch

    log = job_dir(runs_root, job_id) / "controller.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    home = str(Path(launch.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "QA_RUNS_ROOT": str(Path(runs_root).resolve()), "PYTHONPATH": path}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch", "resume", job_id],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=os.getcwd(),
        )  # fmt: skip
    return Spawned(proc.pid, log)


def estimate(spec_job: Any, rendered: RenderedSpec) -> tuple[float, float, str]:
    """(training hours, tokens/s, where that rate comes from) for --dry_run and offers."""
    from launch.gpus import get_profile
    from launch.memory import estimate_hours, lookup_shape, tokens_per_second
    from launch.render import mode_of

    profile = get_profile(rendered.gpu.profile)
    n = rendered.gpu.count
    offload = bool(rendered.deepspeed and "offload_optimizer" in rendered.deepspeed["zero_optimization"])
    shape, mode = lookup_shape(spec_job), mode_of(spec_job)
    rate, source = tokens_per_second(shape, mode, profile.peak_tflops, n, offload, rendered.gpu.profile)
    hours = estimate_hours(spec_job.data.approx_train_tokens, spec_job.training.num_train_epochs, rate)
    return hours, rate, source
