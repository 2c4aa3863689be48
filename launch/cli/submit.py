"""Commands that start work: ``submit`` (the default command), ``offers`` and ``resume``. The steps themselves
(check, record, launch, control) are in ``launch/jobs/submission.py``; this module parses and prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from launch.backends.base import CloudError, OfferQuery
from launch.cli import args as cli_args
from launch.cli.common import DEFAULT_JOB, CliError, Commands, prog
from launch.credentials import CONTAINER_SECRETS, load_secrets, redact
from launch.gpus import get_profile
from launch.jobs.offers import OfferWalk
from launch.jobs.plan import JobPlan, host_requirements, make_computes, spec_json
from launch.jobs.state import JobOptions, JobRow, JobState, Registry
from launch.jobs.status import summary
from launch.jobs.submission import (
    SubmitError,
    estimate,
    launch_once,
    local_outputs,
    prepare,
    run_controller,
    save_spec,
    spawn_controller,
)
from launch.render import mode_of, preemption_bound_line, render, with_save_bound
from qa_train.spec import RenderedSpec, load_job

PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


def _echo(line: str) -> None:
    print(line, flush=True)


class SubmitCommands(Commands):
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
        nodes: int = 1,
    ) -> None:
        """Render JOB for GPU and submit it (or print the rendered spec with --dry_run).

        --managed: stay attached as the job's controller (relaunch on preemption, up to --max_restarts);
        --max_cost USD: dollars over every launch; a warning at 80%, then at the cap the container is asked to
        checkpoint and stop and the job ends STOPPED_BUDGET (needs --managed or --detach); --detach: run that
        controller in the background (status/logs/cancel/resume from any shell). Cloud instances stop
        themselves when the run ends unless --keep_instance. --backend local without sync binds runs/JOB_ID/outputs
        (or QA_RUNS_DIR) at the container's /runs: the report, metrics and model stay on this machine.
        --nodes N (> 1): one RunPod Instant Cluster of N nodes (--backend runpod, --managed or --detach); the
        price and --max_cost count every node."""
        if max_cost is not None and not float(max_cost) > 0:
            raise cli_args.UsageError(f"--max_cost must be > 0 dollars (got {max_cost})")
        if max_cost is not None and not (managed or detach or dry_run):
            raise cli_args.UsageError("--max_cost needs --managed or --detach (its controller stops the job)")
        from launch.jobs.nodes import nodes_problem

        controlled = bool(managed or detach or dry_run)
        if problem := nodes_problem(int(nodes), backend, controlled, bool(interruptible)):
            raise cli_args.UsageError(problem)
        spec_job = with_save_bound(load_job(job), bool(interruptible))  # interruptible: save every 30 min
        secrets = load_secrets(CONTAINER_SECRETS, env_file=env_file)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
        rendered = render(spec_job, gpu, num_gpus=num_gpus, offload=offload, image=image,
                          job_id=str(job_id) if job_id is not None else None, env=env,
                          secret_names=list(secrets))  # fmt: skip
        from launch.jobs.disk import disk_warning

        if disk := disk_warning(rendered):  # two checkpoints + base + final must fit on disk_gb
            print(disk, file=sys.stderr)
        if dry_run:
            print(redact(spec_json(rendered), secrets), end="")
            if bound := preemption_bound_line(spec_job.training.save_every_minutes):  # no offer known yet
                print(bound, file=sys.stderr)
            hours, rate, source = estimate(spec_job, rendered)
            print(f"estimated training: {hours:.1f} h at {rate:,.0f} tokens/s ({source}); dollars = $/h of the "
                  f"offer × {hours:.1f} h (see: {prog()} offers)", file=sys.stderr)  # fmt: skip
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
            outputs_dir=_outputs_dir(self._runs_dir, rendered, backend),
            env_file=str(Path(env_file).resolve()) if env_file else None, nodes=int(nodes),
        )  # fmt: skip
        reg = self._registry()  # a broken registry file is found before anything else is checked or rented
        if get_profile(rendered.gpu.profile).is_cpu and backend != "local":
            raise cli_args.UsageError(f"--gpu cpu runs only on --backend local (asked: {backend})")
        try:
            plan = prepare(rendered, secrets, opts)
        except SubmitError as e:
            raise CliError(str(e)) from None
        from launch.jobs.pin import pin_plan

        plan = pin_plan(plan)  # hf:// inputs pinned to their commit: every launch reads the same data
        rendered = plan.spec
        row, created = reg.claim(
            rendered.job_id, backend, gpu=rendered.gpu.profile, run_name=spec_job.run_name,
            run_uri=plan.store.layout.root if plan.store else None, managed=bool(managed or detach), options=opts,
        )  # fmt: skip
        if not created:
            self._already_submitted(row)
            return
        try:
            save_spec(reg, plan)
        except SubmitError as e:
            raise CliError(str(e)) from None
        if managed or detach:
            print(f"managed job {rendered.job_id} submitted ({backend}, max_restarts {opts.max_restarts})")
            self._exit_code = self._spawn(rendered.job_id) if detach else self._control(reg, plan)
            return
        self._launch_once(reg, plan)

    def _already_submitted(self, row: JobRow) -> None:
        live = f"instance {row.instance_id}" if row.instance_id else "no instance yet"
        hint = f"; re-attach with: {prog()} resume {row.job_id}" if row.managed else ""
        print(f"job {row.job_id} already submitted (backend {row.backend}, {live}, state {row.state}); "
              f"not creating another instance{hint}")  # fmt: skip
        print(json.dumps({"job_id": row.job_id, "created": False, "instance_id": row.instance_id,
                          "state": str(row.state)}))  # fmt: skip

    def _launch_once(self, reg: Registry, plan: JobPlan) -> None:
        try:
            got = launch_once(reg, plan, _echo)
        except SubmitError as e:
            raise CliError(str(e)) from None
        price = got.price_per_hour
        print(f"submitted {plan.job_id}: {got.backend} instance {got.instance_id}"
              + (f" at ${price:.3f}/h" if price else ""))  # fmt: skip
        outputs = _outputs_of(plan)
        if outputs:
            print(f"outputs (report, metrics, model): {outputs}")
        print(json.dumps({"job_id": plan.job_id, "created": True, "backend": got.backend,
                          "instance_id": got.instance_id, "price_per_hour": price,
                          **({"outputs": outputs} if outputs else {})}))  # fmt: skip

    def _spawn(self, job_id: str) -> int:
        spawned = spawn_controller(self._runs_dir, job_id)
        print(f"controller running in the background (pid {spawned.pid}); log: {spawned.log}")
        print(f"  {prog()} status {job_id} | logs {job_id} | cancel {job_id}")
        print(json.dumps({"job_id": job_id, "created": True, "managed": True, "controller_pid": spawned.pid}))
        return 0

    def _control(self, reg: Registry, plan: JobPlan) -> int:
        try:
            final = run_controller(reg, plan, _echo)
        except SubmitError as e:
            raise CliError(str(e)) from None
        except KeyboardInterrupt:
            print(f"\ncontroller stopped; job {plan.job_id} keeps running unwatched. Re-attach: {prog()} "
                  f"resume {plan.job_id}   stop it: {prog()} cancel {plan.job_id}", file=sys.stderr)  # fmt: skip
            return 130
        print(json.dumps(summary(reg, plan.job_id), default=str))
        if final != JobState.SUCCEEDED:
            raise CliError(f"job {plan.job_id} {final}: {reg.last_reason(plan.job_id)}")
        return 0

    def resume(self, job_id: str, detach: bool = False) -> None:
        """Re-attach a controller to a managed job (after the old one was killed); never double-launches."""
        reg = self._registry()
        row = self._row(reg, job_id)
        if not row.managed:
            raise CliError(f"job {job_id} is not a managed job (submit it with --managed)")
        plan = self._job_plan(reg, row)
        if detach:
            self._exit_code = self._spawn(row.job_id)
            return
        self._exit_code = self._control(reg, plan)

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
        hours, rate, source = estimate(spec_job, rendered)
        opts = JobOptions(backend=backend, interruptible=bool(interruptible), max_price=max_price)
        try:
            computes = make_computes(backend, opts)
            query = OfferQuery(profile=profile, num_gpus=n, interruptible=bool(interruptible), max_price=max_price,
                               disk_gb=spec_job.disk_gb, **host_requirements(rendered))  # fmt: skip
            walk = OfferWalk(computes)
            found = walk.offers(query)
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
            for line in walk.skipped:  # stdout stays the JSON list
                print(f"skipped: {line}", file=sys.stderr)
            return
        print(f"{n}x {profile.display} for {spec_job.run_name} ({mode_of(spec_job)}), est. {hours:.1f} h")
        print(f"at {rate:,.0f} tokens/s: {source}")
        print(
            f"hosts with CUDA ≥ {query.min_cuda or '-'}, RAM ≥ {query.min_ram_gb} GB, vCPUs ≥ {query.min_vcpus}"
        )
        head = f"{'cloud':<8} {'offer':<24} {'gpu':<22} {'n':>2} {'$/h':>8} {'reliab.':>7} {'est. $':>8}"
        print(f"{head} {'driver':<12}")
        for r in rows:
            rel = f"{r['reliability']:.3f}" if r["reliability"] is not None else "-"
            # vast names the host's driver; RunPod only the floor its deploy's allowedCudaVersions stand for
            ex = r.get("extra") or {}
            drv = ex.get("driver_version") or (f">={ex['min_driver']}" if ex.get("min_driver") else "-")
            print(f"{r['backend']:<8} {r['offer_id']:<24} {r['gpu_name'][:22]:<22} {r['num_gpus']:>2} "
                  f"{r['price_per_hour']:>8.3f} {rel:>7} {r['est_cost']:>8.2f} {drv:<12}")  # fmt: skip
        if not rows:
            print("(no offers)")
        for line in walk.skipped:
            print(f"skipped: {line}")


def _outputs_dir(runs_root: str, rendered: RenderedSpec, backend: str) -> str | None:
    """The host folder bound at a local job's /runs. Only without ``sync``: a job with object storage keeps
    its container's disk to itself like a rented machine (a relaunch resumes from object storage, and
    ``status`` reads the run there); ``QA_RUNS_DIR`` still binds one for it (``LocalCompute``)."""
    if backend != "local" or rendered.job.sync is not None:
        return None
    return local_outputs(runs_root, rendered.job_id)


def _outputs_of(plan: JobPlan) -> str | None:
    """Where a local job's run folder is on this machine (None for a cloud job: object storage has it)."""
    from launch.jobs.local_run import LocalRun

    local = LocalRun.of(plan)
    return str(local.root) if local is not None else None
