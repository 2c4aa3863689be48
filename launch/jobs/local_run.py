"""A local job's run folder on the host: the container's ``/runs`` is bound to ``runs/<job>/outputs`` (or
``QA_RUNS_DIR``), so its report, live metrics and outputs can be read there without object storage.

Why: a local job without ``sync`` kept everything inside the container; ``status`` said "no metrics yet" after
training had ended and nothing said where the model was. Read-only here: the container writes these files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from launch.jobs.plan import JobPlan
from qa_train.contract import EVAL, FINAL, MERGED, METRICS_NAME, REPORT_NAME, RunMetrics, RunReport

RUNS_MOUNT = "/runs"  # where the local backend binds the host folder (LocalCompute.runs_mount)


@dataclass(frozen=True)
class LocalRun:
    """``<outputs>/<run_name>`` on the host and the container paths of the job spec mapped into it."""

    outputs: Path  # the host folder bound at /runs
    plan: JobPlan

    @classmethod
    def of(cls, plan: JobPlan) -> LocalRun | None:
        """The run's host folder for a local job whose outputs go under the bound /runs, else None."""
        out = plan.options.outputs_dir
        if plan.options.backend != "local" or not out:
            return None
        if PurePosixPath(plan.spec.job.output_root) != PurePosixPath(RUNS_MOUNT):
            return None  # the spec writes elsewhere in the container: nothing of it lands in the bound folder
        return cls(Path(out), plan)

    def host(self, container_path: str) -> Path:
        """A container path under /runs as the host sees it."""
        return self.outputs / PurePosixPath(container_path).relative_to(RUNS_MOUNT)

    @property
    def root(self) -> Path:
        return self.host(self.plan.spec.job.run_dir())

    def read_report(self) -> RunReport | None:
        path = self.root / REPORT_NAME
        return RunReport.from_json(path.read_text(), str(path)) if path.is_file() else None

    def read_metrics(self) -> RunMetrics | None:
        path = self.host(self.plan.spec.job.train_output_dir()) / METRICS_NAME
        return RunMetrics.from_json(path.read_text(), str(path)) if path.is_file() else None

    def artifacts(self, expected: dict[str, str]) -> dict[str, Any]:
        """Like ``status.artifacts`` for object storage: each expected folder, present or not, on the host."""
        job = self.plan.spec.job
        where = {FINAL: job.train_output_dir(), MERGED: job.merged_dir(), EVAL: f"{job.run_dir()}/{EVAL}"}
        out: dict[str, Any] = {"location": str(self.root), "folders": {}}
        for name, what in expected.items():
            folder = self.host(where.get(name, f"{job.run_dir()}/{name}"))
            files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
            out["folders"][name] = {
                "what": what,
                "uri": str(folder),
                "committed": bool(files),
                "files": len(files),
            }
        return out
