"""``python launch/submit.py --gpu a100 [--job jobs/x.yaml] [--backend …] [--dry_run]`` and companions
(``offers``, ``status``, ``logs``, ``cancel``, ``list``), one Fire CLI.

Import-light on purpose: ``--dry_run`` renders and prints without touching a cloud, Docker or torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is launch/, whose http.py/secrets.py would shadow the standard library.
_REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(_REPO)
elif str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from launch.gpus import PROFILES, get_profile  # noqa: E402
from launch.registry import Registry  # noqa: E402
from launch.render import PlanError, mode_of, render  # noqa: E402
from launch.secrets import CONTAINER_SECRETS, SecretError, load_secrets, redact  # noqa: E402
from qa_train.spec import RenderedSpec, SpecError, load_job  # noqa: E402

logger = logging.getLogger("launch")
DEFAULT_JOB = "jobs/mistral-qa-full.yaml"
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
COMMANDS = ("submit", "offers", "status", "logs", "cancel", "list")


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
    ) -> None:
        """Render JOB for GPU and submit it (or print the rendered spec with --dry_run)."""
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
        reg = self._registry()
        row, created = reg.claim(
            rendered.job_id, backend, gpu=rendered.gpu.profile, run_name=spec_job.run_name
        )
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
        if row.instance_id:
            _backend(row.backend).cancel(row.instance_id)
        reg.update(row.job_id, state="CANCELLED", reason="cancelled by user")
        print(
            f"cancelled {row.job_id}"
            + (f" ({row.backend} instance {row.instance_id})" if row.instance_id else "")
        )

    def list(self) -> None:
        """All jobs in the registry."""
        rows = self._registry().list()
        print(f"{'job_id':<44} {'backend':<8} {'gpu':<9} {'state':<10} instance")
        for r in rows:
            print(f"{r.job_id:<44} {r.backend:<8} {r.gpu or '-':<9} {r.state:<10} {r.instance_id or '-'}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["submit", *argv]  # the bare form `submit.py --gpu a100` submits
    logging.basicConfig(
        level=os.environ.get("QA_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    runs_dir = os.environ.get("QA_RUNS_ROOT", "runs")
    import fire

    try:
        fire.Fire(Launcher(runs_dir), command=argv, name="submit.py")
    except (SpecError, PlanError, SecretError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from launch.backends.base import BackendError
        from launch.http import ApiError

        if isinstance(e, BackendError | ApiError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    except SystemExit as e:  # fire's usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Launcher", "main", "PROFILES", "RenderedSpec"]
