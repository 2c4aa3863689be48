"""Commands about recorded jobs: ``status``, ``watch``, ``logs``, ``cancel`` and ``list`` (the registry under
``runs/``, the run report, the live instance)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from launch.backends.base import CloudError
from launch.cli import args as cli_args
from launch.cli.common import CliError, Commands, compute, dumps
from launch.jobs.offers import destroy
from launch.jobs.state import JobState, RegistryError
from launch.jobs.status import job_status, status_lines, summary
from qa_train.contract import FailureReason


class JobCommands(Commands):
    def status(self, job_id: str | None = None, *, json: bool = False) -> None:  # noqa: A002 - the flag is --json
        """One job: the registry's record, the run report from object storage (state, stages, last committed
        step) and the live instance state; without JOB_ID, the list. ``--json`` for machines."""
        if job_id is None:
            return self.list(as_json=json)
        reg = self._registry()
        row = self._row(reg, job_id)
        doc = job_status(reg, row, self._job_plan(reg, row, computes=False), compute)
        if json:
            print(dumps(doc))
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
        plan = self._job_plan(reg, row, computes=False)

        def doc() -> dict[str, Any]:
            return job_status(reg, self._row(reg, job_id), plan, compute)

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
            for line in compute(live[-1].backend).logs(live[-1].instance_id, follow=follow, tail=tail):
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
        reg.transition(row.job_id, JobState.CANCELLED, "cancelled by user", FailureReason.CANCELLED_BY_USER)
        gone = []
        for x in reg.open_launches(row.job_id):
            try:
                destroy(compute(x.backend), x.instance_id)
            except CloudError as e:
                raise CliError(f"job {row.job_id} cancelled, but {e}") from None
            reg.end_launch(row.job_id, x.instance_id, "cancelled by user")
            gone.append(f"{x.backend} instance {x.instance_id}")
        print(f"cancelled {row.job_id}" + (f" ({', '.join(gone)})" if gone else ""))

    def list(self, as_json: bool = False) -> None:
        """All jobs in the registry with restarts, cost so far and last committed step."""
        reg = self._registry()
        rows, problem = reg.list_readable()  # a damaged registry: what is still readable, then its one line
        out = []
        for r in rows:
            try:
                out.append({**summary(reg, r.job_id), "gpu": r.gpu})
            except RegistryError as e:
                problem = problem or str(e)
                out.append({"job_id": r.job_id, "state": str(r.state), "backend": r.backend, "gpu": r.gpu,
                            "restarts": r.restarts, "cost_usd": None, "last_step": r.last_step,
                            "instance_id": r.instance_id})  # fmt: skip
        if as_json:
            print(dumps(out))
        else:
            print(
                f"{'job_id':<44} {'backend':<8} {'gpu':<9} {'state':<14} {'restarts':>8} {'cost $':>8} {'step':>6} instance"
            )
            for d in out:
                step = d["last_step"] if d["last_step"] is not None else "-"
                cost = f"{d['cost_usd']:>8.3f}" if d["cost_usd"] is not None else f"{'?':>8}"
                print(f"{d['job_id']:<44} {d['backend']:<8} {d['gpu'] or '-':<9} {d['state']:<14} {d['restarts']:>8} "
                      f"{cost} {step:>6} {d['instance_id'] or '-'}")  # fmt: skip
        if problem is not None:
            raise RegistryError(problem)
