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
from launch.credentials import (  # noqa: E402
    CONTAINER_SECRETS,
    SecretError,
    check_environment,
    install_log_redaction,
    load_secrets,
    redact,
)
from launch.gpus import PROFILES, get_profile  # noqa: E402
from launch.registry import Registry, RegistryError  # noqa: E402
from launch.render import PlanError, mode_of, render  # noqa: E402
from qa_train.spec import RenderedSpec, SpecError, load_job  # noqa: E402

logger = logging.getLogger("launch")
DEFAULT_JOB = "jobs/mistral-qa-full.yaml"
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
COMMANDS = ("submit", "offers", "status", "logs", "cancel", "list", "resume", "push", "check_image")


class CliError(Exception):
    """Printed as ``error: …`` with exit status 1 (no traceback)."""


def _backend(name: str, poll_s: float | None = None, ready_timeout_s: float | None = None, **kw: Any):
    from launch.backends import get_backend

    if poll_s is not None:
        kw["poll_s"] = poll_s
    if ready_timeout_s is not None:
        kw["ready_timeout_s"] = ready_timeout_s
    return get_backend(name, **kw)


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
    ) -> None:
        """Render JOB for GPU and submit it (or print the rendered spec with --dry_run).

        --managed: stay attached as the job's controller (relaunch on preemption, up to --max_restarts);
        --detach: run that controller in the background (status/logs/cancel/resume from any shell)."""
        spec_job = load_job(job)
        secrets = load_secrets(CONTAINER_SECRETS, env_file=env_file)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
        rendered = render(
            spec_job,
            gpu,
            num_gpus=num_gpus,
            offload=offload,
            image=image,
            job_id=str(job_id) if job_id is not None else None,
            env=env,
            secret_names=list(secrets),
        )
        doc = rendered.model_dump(mode="json")
        if dry_run:
            print(redact(json.dumps(doc, indent=2), secrets))
            return
        backend = backend or ("local" if get_profile(gpu).is_cpu else "cheapest")
        if get_profile(gpu).is_cpu and backend != "local":
            raise CliError(f"--gpu cpu runs only on --backend local (asked: {backend})")
        if backend != "local":  # a cloud without a key fails here, before anything is recorded
            from launch.backends.base import BackendError

            try:
                _backend(backend)
            except BackendError as e:
                raise CliError(str(e)) from e
        reg = self._registry()
        row, created = reg.claim(
            rendered.job_id, backend, gpu=rendered.gpu.profile, run_name=spec_job.run_name
        )
        if managed or detach:
            from launch.managed import ManagedOptions

            opts = ManagedOptions(
                backend=backend,
                interruptible=interruptible,
                max_price=max_price,
                max_restarts=int(max_restarts),
                poll_s=10.0 if poll_s is None else float(poll_s),
                ready_timeout_s=1800.0 if ready_timeout_s is None else float(ready_timeout_s),
                backoff_s=float(backoff_s),
                backoff_max_s=max(600.0, float(backoff_s)),
                capacity_wait_s=float(capacity_wait_s),
                step_every_s=min(30.0, max(1.0, 3 * (10.0 if poll_s is None else float(poll_s)))),
                data_dir=str(Path(data_dir).resolve()) if data_dir else None,
                network=network,
                env_file=str(Path(env_file).resolve()) if env_file else None,
            )
            self._exit_code = self._submit_managed(reg, row, created, rendered, doc, secrets, opts, detach)
            return
        if not created:
            print(
                f"job {row.job_id} already submitted (backend {row.backend}, instance {row.instance_id}, "
                f"state {row.state}); not creating another instance"
            )
            print(
                json.dumps(
                    {
                        "job_id": row.job_id,
                        "created": False,
                        "instance_id": row.instance_id,
                        "state": row.state,
                    }
                )
            )
            return
        out_dir = Path(self._runs_dir) / rendered.job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "spec.json").write_text(redact(json.dumps(doc, indent=2), secrets) + "\n")
        kw: dict[str, Any] = {}
        if backend == "local":
            kw = {
                "data_dir": data_dir,
                "runs_dir": str(Path(self._runs_dir).resolve() / rendered.job_id / "outputs"),
                "network_mode": network,
            }
        try:
            be = _backend(backend, poll_s, ready_timeout_s, **kw)

            def on_created(inst) -> None:
                reg.update(rendered.job_id, state="PENDING", backend=inst.backend, instance_id=inst.instance_id,
                           price_per_hour=inst.offer.price_per_hour if inst.offer else None, reason="instance created")  # fmt: skip

            inst = be.create(
                rendered, secrets, interruptible=interruptible, max_price=max_price, on_created=on_created
            )
        except Exception as e:
            reg.update(rendered.job_id, state="FAILED", reason=redact(str(e), secrets))
            raise CliError(redact(str(e), secrets)) from None
        reg.update(
            rendered.job_id,
            state="RUNNING",
            backend=inst.backend,
            instance_id=inst.instance_id,
            reason="running",
        )
        price = inst.offer.price_per_hour if inst.offer else None
        print(
            f"submitted {rendered.job_id}: {inst.backend} instance {inst.instance_id}"
            + (f" at ${price:.3f}/h" if price else "")
        )
        print(
            json.dumps(
                {
                    "job_id": rendered.job_id,
                    "created": True,
                    "backend": inst.backend,
                    "instance_id": inst.instance_id,
                    "price_per_hour": price,
                }
            )
        )

    # -- managed jobs --------------------------------------------------------------------------------------
    def _submit_managed(self, reg, row, created, rendered, doc, secrets, opts, detach: bool) -> int:  # noqa: ANN001
        if not created:
            live = f"instance {row.instance_id}" if row.instance_id else "no instance yet"
            print(
                f"job {row.job_id} already submitted (state {row.state}, {live}); not creating another; "
                f"re-attach with: python launch/submit.py resume {row.job_id}"
            )
            print(json.dumps({"job_id": row.job_id, "created": False, "state": row.state}))
            return 0
        out_dir = Path(self._runs_dir) / rendered.job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "spec.json").write_text(redact(json.dumps(doc, indent=2), secrets) + "\n")
        reg.update(rendered.job_id, state="PENDING", reason="managed job submitted", managed=opts.to_dict())
        print(f"managed job {rendered.job_id} submitted ({opts.backend}, max_restarts {opts.max_restarts})")
        if detach:
            return self._spawn_controller(rendered.job_id)
        return self._control(reg, rendered.job_id, rendered, secrets, opts)

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

    def _control(self, reg: Registry, job_id: str, rendered: RenderedSpec, secrets: dict, opts) -> int:  # noqa: ANN001
        from launch.backends.base import BackendError
        from launch.managed import Controller, summary

        try:
            ctl = Controller(
                reg, job_id, rendered, secrets, opts, echo=lambda s: print(redact(s, secrets), flush=True)
            )
            final = ctl.run()
        except BackendError as e:  # e.g. no cloud configured: the job must not sit in PENDING forever
            reg.update(job_id, state="FAILED", reason=f"controller stopped: {e}")
            raise CliError(f"job {job_id} FAILED: {e}") from e
        except KeyboardInterrupt:
            print(
                f"\ncontroller stopped; job {job_id} keeps running unwatched. "
                f"Re-attach: python launch/submit.py resume {job_id}   stop it: python launch/submit.py cancel {job_id}",
                file=sys.stderr,
            )
            return 130
        print(json.dumps(summary(reg, job_id), default=str))
        if final != "SUCCEEDED":
            events = reg.events(job_id)
            raise CliError(f"job {job_id} {final}: {events[-1]['reason'] if events else ''}")
        return 0

    def resume(self, job_id: str, detach: bool = False) -> None:
        """Re-attach a controller to a managed job (after the old one was killed); never double-launches."""
        from launch.managed import ManagedError, ManagedOptions
        from qa_train.spec import parse_rendered

        reg = self._registry()
        row = reg.get(str(job_id))
        if row is None:
            raise CliError(f"no job {job_id!r} in {reg.path}")
        if "managed" not in row.info:
            raise CliError(f"job {job_id} is not a managed job (submit it with --managed)")
        opts = ManagedOptions.from_dict(row.info["managed"])
        spec_path = Path(self._runs_dir) / row.job_id / "spec.json"
        try:
            rendered = parse_rendered(json.loads(spec_path.read_text()), str(spec_path))
        except (OSError, ValueError) as e:
            raise CliError(f"{spec_path}: cannot read the job's rendered spec: {e}") from None
        secrets = load_secrets(CONTAINER_SECRETS, env_file=opts.env_file)
        missing = [n for n in rendered.secret_env if n not in secrets]
        if missing:
            raise CliError(
                f"job {job_id} was submitted with secrets {', '.join(missing)} that are not set now "
                "(set them in the environment or in the --env_file it was submitted with)"
            )
        if detach:
            self._exit_code = self._spawn_controller(row.job_id)
            return
        try:
            self._exit_code = self._control(reg, row.job_id, rendered, secrets, opts)
        except ManagedError as e:
            raise CliError(str(e)) from None

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
        from launch.memory import estimate_hours, lookup_shape

        spec_job = load_job(job)
        rendered = render(spec_job, gpu, num_gpus=num_gpus)
        profile = get_profile(gpu)
        n = rendered.gpu.count
        offload = bool(rendered.deepspeed and "offload_optimizer" in rendered.deepspeed["zero_optimization"])
        hours = estimate_hours(lookup_shape(spec_job), mode_of(spec_job), spec_job.training.num_train_epochs,
                               spec_job.data.approx_train_tokens, profile.peak_tflops, n, offload)  # fmt: skip
        found = _backend(backend).offers(
            profile, n, interruptible=interruptible, max_price=max_price, disk_gb=spec_job.disk_gb
        )
        rows = [
            {**o.to_dict(), "est_hours": round(hours, 2), "est_cost": round(o.price_per_hour * hours, 2)}
            for o in found[:limit]
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        print(f"{n}x {profile.display} for {spec_job.run_name} ({mode_of(spec_job)}), est. {hours:.1f} h")
        print(f"{'cloud':<8} {'offer':<24} {'gpu':<22} {'n':>2} {'$/h':>8} {'reliab.':>7} {'est. $':>8}")
        for r in rows:
            rel = f"{r['reliability']:.3f}" if r["reliability"] is not None else "-"
            print(
                f"{r['backend']:<8} {r['offer_id']:<24} {r['gpu_name'][:22]:<22} {r['num_gpus']:>2} {r['price_per_hour']:>8.3f} {rel:>7} {r['est_cost']:>8.2f}"
            )
        if not rows:
            print("(no offers)")

    def status(self, job_id: str | None = None) -> None:
        """State of one job (asks its backend) or of all jobs (from the registry)."""
        reg = self._registry()
        if job_id is None:
            return self.list()
        row = reg.get(str(job_id))
        if row is None:
            raise CliError(f"no job {job_id!r} in {reg.path}")
        if "managed" in row.info:
            from launch.managed import summary

            doc = {**summary(reg, row.job_id), "events": reg.events(row.job_id),
                   "launches": reg.launches(row.job_id), "artifacts": row.info.get("artifacts")}  # fmt: skip
            print(json.dumps(doc, indent=2, default=str))
            return None
        st = None
        if row.instance_id:
            st = _backend(row.backend).status(row.instance_id)
            if st.state in ("EXITED", "GONE", "FAILED", "STOPPED") and row.state not in ("CANCELLED",):
                reg.update(row.job_id, state=st.state, reason=st.detail)
        out = {
            **row.to_dict(),
            "live": None
            if st is None
            else {"state": st.state, "detail": st.detail, "exit_code": st.exit_code},
        }
        print(json.dumps(out, indent=2, default=str))

    def logs(self, job_id: str, follow: bool = True, tail: int = 1000) -> None:
        """Print the job's logs; follow until it ends (Ctrl-C stops following, not the job)."""
        row = self._registry().get(str(job_id))
        if row is not None and "managed" in row.info:
            saved = sorted((Path(self._runs_dir) / row.job_id / "logs").glob("launch-*.log"),
                           key=lambda p: int(p.name.split("-")[1]))  # fmt: skip
            live = [r for r in self._registry().launches(row.job_id) if r["ended_at"] is None]
            for p in saved:
                print(f"==> {p.name} <==")
                print(p.read_text(), end="", flush=True)
            if not live:
                if not saved:
                    raise CliError(f"job {job_id}: no instance and no saved logs yet")
                return
            row.backend, row.instance_id = live[-1]["backend"], live[-1]["instance_id"]
        if row is None or not row.instance_id:
            raise CliError(f"no running instance recorded for job {job_id!r}")
        try:
            for line in _backend(row.backend).logs(row.instance_id, follow=follow, tail=tail):
                print(line, flush=True)
        except KeyboardInterrupt:
            return

    def cancel(self, job_id: str) -> None:
        """Stop and destroy the job's instance (already gone counts as done)."""
        reg = self._registry()
        row = reg.get(str(job_id))
        if row is None:
            raise CliError(f"no job {job_id!r} in {reg.path}")
        if "managed" in row.info:
            # mark first, so the controller (attached or detached) never takes the vanished instance for a
            # preemption and relaunches it; then destroy whatever is live
            from launch.registry import TERMINAL

            if row.state in TERMINAL:
                print(f"job {row.job_id} already {row.state}")
                return
            reg.set_state_unless(row.job_id, "CANCELLED", "cancelled by user", unless=TERMINAL)
            for r in reg.launches(row.job_id):
                if r["ended_at"] is None:
                    _backend(r["backend"]).cancel(r["instance_id"])
                    reg.end_launch(row.job_id, r["instance_id"], "cancelled by user")
            print(f"cancelled {row.job_id}")
            return
        if row.instance_id:
            _backend(row.backend).cancel(row.instance_id)
        reg.update(row.job_id, state="CANCELLED", reason="cancelled by user")
        print(
            f"cancelled {row.job_id}"
            + (f" ({row.backend} instance {row.instance_id})" if row.instance_id else "")
        )

    def list(self, as_json: bool = False) -> None:
        """All jobs in the registry; managed ones with restarts, cost so far and last committed step."""
        reg = self._registry()
        rows = reg.list()
        out = []
        for r in rows:
            d = {"job_id": r.job_id, "backend": r.backend, "gpu": r.gpu, "state": r.state,
                 "instance_id": r.instance_id, "managed": "managed" in r.info}  # fmt: skip
            if d["managed"]:
                from launch.managed import summary

                d.update(summary(reg, r.job_id))
                if r.state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    d["last_step"] = _live_step(self._runs_dir, r) or d["last_step"]
            out.append(d)
        if as_json:
            print(json.dumps(out, indent=2, default=str))
            return
        print(
            f"{'job_id':<44} {'backend':<8} {'gpu':<9} {'state':<10} {'restarts':>8} {'cost $':>8} {'step':>6} instance"
        )
        for d in out:
            if d["managed"]:
                extra = f"{d['restarts']:>8} {d['cost_usd']:>8.3f} {d['last_step'] if d['last_step'] is not None else '-':>6}"
            else:
                extra = f"{'-':>8} {'-':>8} {'-':>6}"
            print(
                f"{d['job_id']:<44} {d['backend']:<8} {d['gpu'] or '-':<9} {d['state']:<10} {extra} {d['instance_id'] or '-'}"
            )

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


def _live_step(runs_dir: str, row) -> int | None:  # noqa: ANN001
    """Newest committed step from object storage for a running managed job (quick; None when unknown)."""
    try:
        from launch.managed import committed_step
        from qa_train.spec import parse_rendered

        spec = parse_rendered(json.loads((Path(runs_dir) / row.job_id / "spec.json").read_text()))
        if spec.job.sync is None:
            return None
        return committed_step(spec, load_secrets(CONTAINER_SECRETS))
    except Exception as e:  # storage down or no credentials here: the controller's cached value stands
        logger.info("list: live step of %s unavailable: %s", row.job_id, e)
        return None


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (unknown flag or command, bad value, spec, plan or secret: nothing
    was rendered, recorded or rented), 1 for a runtime failure (backend, API, registry); one ``error:`` line."""
    from pydantic import ValidationError

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("QA_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
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
