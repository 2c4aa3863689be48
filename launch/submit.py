"""``python launch/submit.py --gpu a100 [--job jobs/x.yaml] [--backend …] [--dry_run]`` and companions
(``offers``, ``status``, ``logs``, ``cancel``, ``list``), one Fire CLI.

Import-light on purpose: ``--dry_run`` renders and prints without touching a cloud, Docker or torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python launch/submit.py`), the repository root must be importable for `launch` and `qa_train`.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from launch import cli_args  # noqa: E402
from launch.backends.base import CloudError, Compute, OfferQuery  # noqa: E402
from launch.credentials import (  # noqa: E402
    CONTAINER_SECRETS,
    SecretError,
    check_environment,
    install_log_redaction,
    load_secrets,
    redact,
)
from launch.gpus import PROFILES, get_profile  # noqa: E402
from launch.jobs.controller import ControllerError, RegistryHooks  # noqa: E402
from launch.jobs.lease import LeaseHeld  # noqa: E402
from launch.jobs.offers import Cancelled, OfferWalk, destroy  # noqa: E402
from launch.jobs.plan import (  # noqa: E402
    JobPlan,
    PlanningError,
    check_storage,
    host_requirements,
    make_computes,
    make_plan,
    spec_json,
)
from launch.jobs.state import JobOptions, JobRow, JobState, Registry, RegistryError  # noqa: E402
from launch.jobs.status import job_status, status_lines, summary  # noqa: E402
from launch.render import PlanError, mode_of, preemption_bound_line, render, with_save_bound  # noqa: E402
from qa_train.contract import SPEC_NAME, RunReport  # noqa: E402
from qa_train.logs import setup_logging  # noqa: E402
from qa_train.spec import RenderedSpec, SpecError, load_job, parse_rendered  # noqa: E402

logger = logging.getLogger("launch")
DEFAULT_JOB = "jobs/mistral-qa-full.yaml"
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
COMMANDS = (
    "submit",
    "offers",
    "status",
    "watch",
    "logs",
    "cancel",
    "list",
    "resume",
    "push",
    "check_image",
    "upload-data",
)


class CliError(Exception):
    """Printed as ``error: …`` with exit status 1 (no traceback)."""


class Launcher:
    """Render job specs per GPU and run them on local Docker, vast.ai or RunPod."""

    def __init__(self, runs_dir: str = "runs"):
        self._runs_dir = runs_dir
        self._exit_code = 0  # set by commands whose outcome is not an error message (e.g. ^C of a controller)

    def _registry(self) -> Registry:
        return Registry(self._runs_dir)

    def submit(
        self,
        gpu: str = "a100",
        job: str = DEFAULT_JOB,
        backend: str | None = None,
        num_gpus: int | None = None,
        interruptible: bool = False,
        max_price: float | None = None,
        image: str | None = None,
        dry_run: bool = False,
        job_id: str | None = None,
        offload: str = "auto",
        env_file: str | None = None,
        data_dir: str | None = None,
        network: str | None = None,
        poll_s: float | None = None,
        ready_timeout_s: float | None = None,
        managed: bool = False,
        detach: bool = False,
        max_restarts: int = 3,
        backoff_s: float = 30.0,
        capacity_wait_s: float = 6 * 3600.0,
        max_cost: float | None = None,
        keep_instance: bool = False,
    ) -> None:
        """Render JOB for GPU and submit it (or print the rendered spec with --dry_run).

        --managed: stay attached as the job's controller (relaunch on preemption, up to --max_restarts);
        --max_cost USD: dollars over every launch; a warning at 80%, then at the cap the container is asked to
        checkpoint and stop and the job ends STOPPED_BUDGET (needs --managed or --detach); --detach: run that controller in the background (status/logs/cancel/resume from any
        shell). Cloud instances stop themselves when the run ends unless --keep_instance."""
        if max_cost is not None and not float(max_cost) > 0:
            raise cli_args.UsageError(f"--max_cost must be > 0 dollars (got {max_cost})")
        if max_cost is not None and not (managed or detach or dry_run):
            raise cli_args.UsageError("--max_cost needs --managed or --detach (its controller stops the job)")
        spec_job = with_save_bound(load_job(job), bool(interruptible))  # interruptible: save every 30 min
        secrets = load_secrets(CONTAINER_SECRETS, env_file=env_file)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
        rendered = render(spec_job, gpu, num_gpus=num_gpus, offload=offload, image=image,
                          job_id=str(job_id) if job_id is not None else None, env=env,
                          secret_names=list(secrets))  # fmt: skip
        if dry_run:
            print(redact(spec_json(rendered), secrets), end="")
            if bound := preemption_bound_line(spec_job.training.save_every_minutes):  # no offer known yet
                print(bound, file=sys.stderr)
            hours, rate, source = _estimate(spec_job, rendered)
            print(f"estimated training: {hours:.1f} h at {rate:,.0f} tokens/s ({source}); dollars = $/h of the "
                  f"offer × {hours:.1f} h (see: python launch/submit.py offers)", file=sys.stderr)  # fmt: skip
            return
        backend = backend or ("local" if get_profile(gpu).is_cpu else "cheapest")
        opts = JobOptions(
            backend=backend, interruptible=bool(interruptible), max_price=max_price,
            keep_instance=bool(keep_instance), max_restarts=int(max_restarts),
            poll_s=10.0 if poll_s is None else float(poll_s),
            ready_timeout_s=1800.0 if ready_timeout_s is None else float(ready_timeout_s),
            backoff_s=float(backoff_s), backoff_max_s=max(600.0, float(backoff_s)),
            capacity_wait_s=float(capacity_wait_s), max_cost_usd=None if max_cost is None else float(max_cost),
            data_dir=str(Path(data_dir).resolve()) if data_dir else None, network=network,
            env_file=str(Path(env_file).resolve()) if env_file else None,
        )  # fmt: skip
        reg = self._registry()  # a broken registry file is found before anything else is checked or rented
        plan = self._prepare(rendered, secrets, opts)
        row, created = reg.claim(
            rendered.job_id, backend, gpu=rendered.gpu.profile, run_name=spec_job.run_name,
            run_uri=plan.store.layout.root if plan.store else None, managed=bool(managed or detach), options=opts,
        )  # fmt: skip
        if not created:
            self._already_submitted(row)
            return
        self._save_spec(plan)
        if managed or detach:
            print(f"managed job {rendered.job_id} submitted ({backend}, max_restarts {opts.max_restarts})")
            self._exit_code = self._spawn_controller(rendered.job_id) if detach else self._control(reg, plan)
            return
        self._launch_once(reg, plan)

    # -- submit, step by step ------------------------------------------------------------------------------
    def _prepare(self, rendered: RenderedSpec, secrets: dict[str, str], opts: JobOptions) -> JobPlan:
        """Everything checked before anything is recorded or rented: backend, storage, image, cloud keys."""
        if get_profile(rendered.gpu.profile).is_cpu and opts.backend != "local":
            raise cli_args.UsageError(f"--gpu cpu runs only on --backend local (asked: {opts.backend})")
        try:
            plan = make_plan(rendered, secrets, opts)
        except (PlanningError, CloudError) as e:
            raise CliError(str(e)) from None
        if plan.store is not None:
            try:
                check_storage(plan.store)
            except PlanningError as e:
                raise CliError(str(e)) from None
        if opts.backend != "local":
            from launch.images import ImageError, check_image

            try:
                check_image(rendered.image, plan.request.registry_auth)
            except ImageError as e:
                raise CliError(str(e)) from None
        return plan

    def _already_submitted(self, row: JobRow) -> None:
        live = f"instance {row.instance_id}" if row.instance_id else "no instance yet"
        hint = f"; re-attach with: python launch/submit.py resume {row.job_id}" if row.managed else ""
        print(f"job {row.job_id} already submitted (backend {row.backend}, {live}, state {row.state}); "
              f"not creating another instance{hint}")  # fmt: skip
        print(json.dumps({"job_id": row.job_id, "created": False, "instance_id": row.instance_id,
                          "state": str(row.state)}))  # fmt: skip

    def _save_spec(self, plan: JobPlan) -> None:
        """The one place ``spec.json`` is written: ``runs/<job>/spec.json`` (what ``resume``/``status`` read)
        and, for a job with object storage, ``<run>/spec.json`` (what the container reads) with a fresh run
        report, so a report left by an earlier job of the same run is never taken for this one's."""
        text = redact(spec_json(plan.spec), plan.secrets)
        out = Path(self._runs_dir) / plan.job_id
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(text)
        if plan.store is not None:
            try:
                plan.store.put_text(SPEC_NAME, text)
                plan.store.write_report(
                    RunReport(plan.spec.job.run_name, launch=0, backend=plan.options.backend)
                )
            except Exception as e:
                self._registry().transition(plan.job_id, JobState.FAILED, f"cannot upload the spec: {e}")
                raise CliError(f"cannot upload {plan.store.layout.spec}: {e}") from None

    def _launch_once(self, reg: Registry, plan: JobPlan) -> None:
        """Unmanaged: the one offer walk, once; the instance then runs (and stops itself) on its own."""
        hooks = RegistryHooks(reg, plan.job_id, lambda s: print(s, flush=True))
        walk = OfferWalk(plan.computes, ready_timeout_s=plan.options.ready_timeout_s,
                         poll_s=min(plan.options.poll_s, 5.0), hooks=hooks)  # fmt: skip
        reg.transition(plan.job_id, JobState.STARTING, "walking the offers")
        try:
            got = walk.launch(plan.request, plan.query)
        except BaseException as e:  # the walk destroyed whatever it rented before raising
            reg.transition(plan.job_id, JobState.FAILED, redact(str(e) or type(e).__name__, plan.secrets))
            if isinstance(e, CloudError | Cancelled):
                raise CliError(redact(str(e), plan.secrets)) from None
            raise
        reg.transition(plan.job_id, JobState.RUNNING, f"{got.backend} instance {got.instance_id} started")
        price = got.price_per_hour
        print(f"submitted {plan.job_id}: {got.backend} instance {got.instance_id}"
              + (f" at ${price:.3f}/h" if price else ""))  # fmt: skip
        print(json.dumps({"job_id": plan.job_id, "created": True, "backend": got.backend,
                          "instance_id": got.instance_id, "price_per_hour": price}))  # fmt: skip

    # -- managed jobs --------------------------------------------------------------------------------------
    def _spawn_controller(self, job_id: str) -> int:
        """The same controller as a background process (own session: closing this shell does not stop it)."""
        import subprocess

        log = Path(self._runs_dir) / job_id / "controller.log"
        env = {**os.environ, "QA_RUNS_ROOT": str(Path(self._runs_dir).resolve())}
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, str(_REPO / "launch" / "submit.py"), "resume", job_id],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd=os.getcwd(),
            )  # fmt: skip
        print(f"controller running in the background (pid {proc.pid}); log: {log}")
        print(f"  python launch/submit.py status {job_id} | logs {job_id} | cancel {job_id}")
        print(json.dumps({"job_id": job_id, "created": True, "managed": True, "controller_pid": proc.pid}))
        return 0

    def _control(self, reg: Registry, plan: JobPlan) -> int:
        from launch.jobs.controller import controller_for

        ctl = controller_for(reg, plan, Path(self._runs_dir) / plan.job_id / "logs",
                             echo=lambda s: print(redact(s, plan.secrets), flush=True))  # fmt: skip
        try:
            final = ctl.run()
        except (LeaseHeld, ControllerError) as e:
            raise CliError(str(e)) from None
        except CloudError as e:  # e.g. a destroy that never worked: say so, the job stays as recorded
            raise CliError(f"job {plan.job_id}: controller stopped: {e}") from None
        except KeyboardInterrupt:
            print(f"\ncontroller stopped; job {plan.job_id} keeps running unwatched. Re-attach: python "
                  f"launch/submit.py resume {plan.job_id}   stop it: python launch/submit.py cancel {plan.job_id}",
                  file=sys.stderr)  # fmt: skip
            return 130
        print(json.dumps(summary(reg, plan.job_id), default=str))
        if final != JobState.SUCCEEDED:
            raise CliError(f"job {plan.job_id} {final}: {reg.last_reason(plan.job_id)}")
        return 0

    def _job_plan(self, row: JobRow, *, computes: bool = True) -> JobPlan:
        """A recorded job's plan again: its saved spec, its options, and the secrets set now."""
        spec_path = Path(self._runs_dir) / row.job_id / "spec.json"
        try:
            rendered = parse_rendered(json.loads(spec_path.read_text()), str(spec_path))
        except (OSError, ValueError) as e:
            raise CliError(f"{spec_path}: cannot read the job's rendered spec: {e}") from None
        secrets = load_secrets(CONTAINER_SECRETS, env_file=row.options.env_file)
        missing = [n for n in rendered.secret_env if n not in secrets]
        if missing:
            raise CliError(
                f"job {row.job_id} was submitted with secrets {', '.join(missing)} that are not set now "
                "(set them in the environment or in the --env_file it was submitted with)"
            )
        try:
            return make_plan(rendered, secrets, row.options, None if computes else {})
        except (PlanningError, CloudError) as e:
            raise CliError(str(e)) from None

    def resume(self, job_id: str, detach: bool = False) -> None:
        """Re-attach a controller to a managed job (after the old one was killed); never double-launches."""
        reg = self._registry()
        row = self._row(reg, job_id)
        if not row.managed:
            raise CliError(f"job {job_id} is not a managed job (submit it with --managed)")
        plan = self._job_plan(row)
        if detach:
            self._exit_code = self._spawn_controller(row.job_id)
            return
        self._exit_code = self._control(reg, plan)

    def _row(self, reg: Registry, job_id: str | None) -> JobRow:
        row = reg.get(str(job_id))
        if row is None:
            raise CliError(f"no job {job_id!r} in {reg.path}")
        return row

    def offers(
        self,
        gpu: str = "a100",
        job: str = DEFAULT_JOB,
        backend: str = "cheapest",
        num_gpus: int | None = None,
        interruptible: bool = False,
        max_price: float | None = None,
        limit: int = 10,
        as_json: bool = False,
    ) -> None:
        """Offers across clouds for GPU: $/h, GPU, reliability and the job's estimated cost."""
        spec_job = load_job(job)
        rendered = render(spec_job, gpu, num_gpus=num_gpus)
        profile = get_profile(gpu)
        n = rendered.gpu.count
        hours, rate, source = _estimate(spec_job, rendered)
        opts = JobOptions(backend=backend, interruptible=bool(interruptible), max_price=max_price)
        try:
            computes = make_computes(backend, opts)
            query = OfferQuery(profile=profile, num_gpus=n, interruptible=bool(interruptible), max_price=max_price,
                               disk_gb=spec_job.disk_gb, **host_requirements(rendered))  # fmt: skip
            found = OfferWalk(computes).offers(query)
        except CloudError as e:
            raise CliError(str(e)) from None
        rows = [
            {
                **o.to_dict(),
                "est_hours": round(hours, 2),
                "est_cost": round(o.price_per_hour * hours, 2),
                "est_tokens_per_second": round(rate),
                "est_source": source,
            }
            for o in found[:limit]
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        print(f"{n}x {profile.display} for {spec_job.run_name} ({mode_of(spec_job)}), est. {hours:.1f} h")
        print(f"at {rate:,.0f} tokens/s: {source}")
        print(
            f"hosts with CUDA ≥ {query.min_cuda or '-'}, RAM ≥ {query.min_ram_gb} GB, vCPUs ≥ {query.min_vcpus}"
        )
        print(f"{'cloud':<8} {'offer':<24} {'gpu':<22} {'n':>2} {'$/h':>8} {'reliab.':>7} {'est. $':>8}")
        for r in rows:
            rel = f"{r['reliability']:.3f}" if r["reliability"] is not None else "-"
            print(f"{r['backend']:<8} {r['offer_id']:<24} {r['gpu_name'][:22]:<22} {r['num_gpus']:>2} "
                  f"{r['price_per_hour']:>8.3f} {rel:>7} {r['est_cost']:>8.2f}")  # fmt: skip
        if not rows:
            print("(no offers)")

    def status(self, job_id: str | None = None, *, json: bool = False) -> None:  # noqa: A002 - the flag is --json
        """One job: the registry's record, the run report from object storage (state, stages, last committed
        step) and the live instance state; without JOB_ID, the list. ``--json`` for machines."""
        if job_id is None:
            return self.list(as_json=json)
        reg = self._registry()
        row = self._row(reg, job_id)
        doc = job_status(reg, row, self._job_plan(row, computes=False), _compute)
        if json:
            print(_dumps(doc))
            return None
        for line in status_lines(doc):
            print(line)
        return None

    def watch(self, job_id: str, interval: float = 10.0, *, json: bool = False) -> None:  # noqa: A002
        """Refresh ``status JOB_ID`` every --interval seconds until the job ends (training step/total, ETA,
        loss, lr, tokens/s, restarts, dollars so far): redrawn in place on a terminal, one line per refresh
        otherwise; ``--json``: one JSON document per line. Ctrl-C stops watching, not the job."""
        from launch.jobs.watch import watch as watch_loop

        if not float(interval) > 0:
            raise cli_args.UsageError(f"--interval must be > 0 (got {interval})")
        reg = self._registry()
        row = self._row(reg, job_id)
        plan = self._job_plan(row, computes=False)

        def doc() -> dict[str, Any]:
            return job_status(reg, self._row(reg, job_id), plan, _compute)

        try:
            watch_loop(doc, status_lines, interval=float(interval), as_json=bool(json))
        except KeyboardInterrupt:
            print(f"\nstopped watching; job {job_id} goes on", file=sys.stderr)

    def logs(self, job_id: str, follow: bool = True, tail: int = 1000) -> None:
        """Print the job's logs (saved ones of earlier launches, then the live instance's); follow until it
        ends (Ctrl-C stops following, not the job)."""
        reg = self._registry()
        row = self._row(reg, job_id)
        saved = sorted((Path(self._runs_dir) / row.job_id / "logs").glob("launch-*.log"),
                       key=lambda p: int(p.name.split("-")[1]))  # fmt: skip
        for p in saved:
            print(f"==> {p.name} <==")
            print(p.read_text(), end="", flush=True)
        live = reg.open_launches(row.job_id)
        if not live and not saved:  # an unmanaged job that ended: its instance (stopped) may still have logs
            live = reg.launches(row.job_id)[-1:]
        if not live:
            if not saved:
                raise CliError(f"job {job_id}: no instance and no saved logs yet")
            return
        try:
            for line in _compute(live[-1].backend).logs(live[-1].instance_id, follow=follow, tail=tail):
                print(line, flush=True)
        except KeyboardInterrupt:
            return
        except CloudError as e:
            raise CliError(str(e)) from None

    def cancel(self, job_id: str) -> None:
        """Stop the job: mark it CANCELLED first (a controller then never takes the vanished instance for a
        preemption), then destroy every live instance of it (already gone counts as done)."""
        reg = self._registry()
        row = self._row(reg, job_id)
        if row.state.terminal:
            print(f"job {row.job_id} already {row.state}")
            return
        reg.transition(row.job_id, JobState.CANCELLED, "cancelled by user")
        gone = []
        for x in reg.open_launches(row.job_id):
            try:
                destroy(_compute(x.backend), x.instance_id)
            except CloudError as e:
                raise CliError(f"job {row.job_id} cancelled, but {e}") from None
            reg.end_launch(row.job_id, x.instance_id, "cancelled by user")
            gone.append(f"{x.backend} instance {x.instance_id}")
        print(f"cancelled {row.job_id}" + (f" ({', '.join(gone)})" if gone else ""))

    def list(self, as_json: bool = False) -> None:
        """All jobs in the registry with restarts, cost so far and last committed step."""
        reg = self._registry()
        out = [{**summary(reg, r.job_id), "gpu": r.gpu} for r in reg.list()]
        if as_json:
            print(_dumps(out))
            return
        print(
            f"{'job_id':<44} {'backend':<8} {'gpu':<9} {'state':<14} {'restarts':>8} {'cost $':>8} {'step':>6} instance"
        )
        for d in out:
            step = d["last_step"] if d["last_step"] is not None else "-"
            print(f"{d['job_id']:<44} {d['backend']:<8} {d['gpu'] or '-':<9} {d['state']:<14} {d['restarts']:>8} "
                  f"{d['cost_usd']:>8.3f} {step:>6} {d['instance_id'] or '-'}")  # fmt: skip

    # -- images (launch/images.py) ------------------------------------------------------------------------------
    def push(self, to: str, image: str = "qa-expert/train:latest") -> None:
        """Tag the local IMAGE as TO (REGISTRY/NAME:TAG) and push it; prints the reference for --image.

        Credentials: REGISTRY_USERNAME / REGISTRY_PASSWORD, else whatever `docker login` stored."""
        from launch.images import ImageError, push, registry_auth_from_env

        try:
            pushed = push(str(image), str(to), registry_auth_from_env(str(to)))
        except ImageError as e:
            raise CliError(str(e)) from None
        print(f"use it with: --image {pushed.ref}")
        print(json.dumps({"image": pushed.ref, "digest": pushed.digest}))

    def check_image(self, ref: str) -> None:
        """Check that REF exists in its registry (what a cloud submit checks before renting anything)."""
        from launch.images import ImageError, check_image, registry_auth_from_env

        try:
            digest = check_image(str(ref), registry_auth_from_env(str(ref)))
        except ImageError as e:
            raise CliError(str(e)) from None
        print(f"ok: {ref}" + (f" ({digest})" if digest else ""))

    # -- data (qa_train/contract/store.py upload_dir) -----------------------------------------------------------------
    def upload_data(self, local_dir: str, uri: str) -> None:
        """Upload LOCAL_DIR (or one file) to URI (s3://bucket/prefix), skipping files already there unchanged;
        prints the s3:// URIs to put under ``data:`` in a job spec. Credentials AWS_* (env or *_FILE), endpoint
        AWS_ENDPOINT_URL."""
        from qa_train.contract import upload_dir

        creds = {k: v for k, v in load_secrets(CONTAINER_SECRETS).items() if k.startswith("AWS_")}
        try:
            files = upload_dir(str(local_dir), str(uri), creds or None, progress=sys.stderr.isatty())
        except (OSError, ValueError) as e:
            raise cli_args.UsageError(str(e)) from None
        except Exception as e:  # botocore: refused, unreachable, no such bucket
            raise CliError(f"upload to {uri} failed: {type(e).__name__}: {e}") from None
        fields = {"train": "train_path", "valid": "validation_path", "hotpot": "hotpot_qa_dev_path"}
        hints = []
        for f in files:
            print(f"{'unchanged' if f.skipped else 'uploaded '} {f.uri} ({f.size} bytes)")
            name = f.uri.rsplit("/", 1)[-1].lower()
            field = next((v for k, v in fields.items() if k in name), None)
            if field and name.endswith((".json", ".jsonl")):
                hints.append(f"  {field}: {f.uri}")
        if hints:
            print("in a job spec:\ndata:\n" + "\n".join(hints))


def _estimate(spec_job: Any, rendered: RenderedSpec) -> tuple[float, float, str]:
    """(training hours, tokens/s, where that rate comes from) for --dry_run and offers."""
    from launch.memory import estimate_hours, lookup_shape, tokens_per_second

    profile = get_profile(rendered.gpu.profile)
    n = rendered.gpu.count
    offload = bool(rendered.deepspeed and "offload_optimizer" in rendered.deepspeed["zero_optimization"])
    shape, mode = lookup_shape(spec_job), mode_of(spec_job)
    rate, source = tokens_per_second(shape, mode, profile.peak_tflops, n, offload, rendered.gpu.profile)
    hours = estimate_hours(spec_job.data.approx_train_tokens, spec_job.training.num_train_epochs, rate)
    return hours, rate, source


def _compute(name: str) -> Compute:
    """One cloud's compute for a recorded instance (status, logs, cancel)."""
    from launch.backends import get_compute

    try:
        return get_compute(name)
    except CloudError as e:
        raise CliError(str(e)) from None


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, default=str)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (unknown flag or command, bad value, spec, plan or secret: nothing
    was rendered, recorded or rented), 1 for a runtime failure (backend, API, registry); one ``error:`` line."""
    from pydantic import ValidationError

    argv = list(sys.argv[1:] if argv is None else argv)
    level = os.environ.get("QA_LOG_LEVEL", "WARNING").upper()
    setup_logging(level, "%(levelname)s %(name)s: %(message)s", None, defer_to_host=False)
    install_log_redaction()  # every secret value the launcher sees is redacted from every log line
    runs_dir = os.environ.get("QA_RUNS_ROOT", "runs")
    import fire

    try:
        check_environment()  # a key with a newline is refused by name before any command runs
        command = cli_args.parse(Launcher, argv, COMMANDS, default="submit", **cli_args.launcher_rules())
        launcher = Launcher(runs_dir)
        fire.Fire(launcher, command=command, name="submit.py")
    except (cli_args.UsageError, SpecError, PlanError, SecretError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a rendered spec built from a flag (e.g. --image) that the spec refuses
        from qa_train.spec import format_validation_error

        print(f"error: {format_validation_error(e, 'command line')}", file=sys.stderr)
        return 2
    except (CliError, RegistryError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from launch.backends.base import BackendError
        from launch.backends.transport import ApiError

        if isinstance(e, BackendError | ApiError):
            print(f"error: {redact(str(e))}", file=sys.stderr)
            return 1
        raise
    except SystemExit as e:  # fire's own usage errors (after the checks above, only help output)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return launcher._exit_code


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Launcher", "main", "PROFILES", "RenderedSpec"]
