"""Where a run lives in object storage (folder and file names, ``RunLayout``) and the env names the launcher
gives the container. Defined once: the container writes these paths, the launcher reads them."""

from __future__ import annotations

from dataclasses import dataclass

SPEC_NAME = "spec.json"
REPORT_NAME = "report.json"
FINAL = "final"
MERGED = "merged"
EVAL = "eval"
CHECKPOINT_PREFIX = "checkpoint-"
TOKENIZED = "tokenized"  # <run>/tokenized/<cache key>/: qa_train.data.tokenize's cache, shared by relaunches
REPORT_VERSION = 1
METRICS_NAME = "metrics.json"
REPORT_DIR = "report"  # report.html + plots
TB = "tb"  # <run>/tb/: TensorBoard event files (training.report_to: tensorboard), local <output_dir>/tb/
PACKING_NAME = "packing.json"  # beside train_summary.json: sample-length histogram and fill per pack

# Env the launcher gives the container (short references only: clouds cap env values, vast at 256 characters).
ENV_SPEC = "QA_JOB_SPEC"  # the whole rendered spec as JSON (local backend only)
ENV_SPEC_URI = "QA_JOB_SPEC_URI"  # s3://…/<run_name>/spec.json (cloud backends)
ENV_BACKEND = "QA_BACKEND"  # local | vast | runpod: which cloud's self-stop to use
ENV_KEEP_INSTANCE = "QA_KEEP_INSTANCE"  # "1": do not stop the instance at the end (--keep_instance)
# What the clouds inject into every instance (scoped to that one instance).
VAST_INJECTED = ("CONTAINER_ID", "CONTAINER_API_KEY")
RUNPOD_INJECTED = ("RUNPOD_POD_ID", "RUNPOD_API_KEY")
# Which committed folder proves a stage done (a relaunch skips it): train → final/, merge → merged/, eval → eval/.
STAGE_OUTPUTS = {"train": FINAL, "merge": MERGED, "eval": EVAL}


def run_uri(target: str, run_name: str) -> str:
    """``s3://bucket/prefix/<run_name>`` (no trailing slash)."""
    return f"{target.rstrip('/')}/{run_name}"


@dataclass(frozen=True)
class RunLayout:
    """The URIs of one run's parts; build with ``RunLayout.of(target, run_name)``."""

    root: str

    @classmethod
    def of(cls, target: str, run_name: str) -> RunLayout:
        return cls(run_uri(target, run_name))

    def child(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def spec(self) -> str:
        return self.child(SPEC_NAME)

    @property
    def report(self) -> str:
        return self.child(REPORT_NAME)

    @property
    def metrics(self) -> str:
        return self.child(METRICS_NAME)

    @property
    def final(self) -> str:
        return self.child(FINAL)

    @property
    def merged(self) -> str:
        return self.child(MERGED)

    @property
    def eval(self) -> str:
        return self.child(EVAL)

    def checkpoint(self, step: int) -> str:
        return self.child(f"{CHECKPOINT_PREFIX}{step}")

    def tokenized(self, key: str) -> str:
        return self.child(f"{TOKENIZED}/{key}")


def checkpoint_step(folder_name: str) -> int | None:
    """``checkpoint-120`` → 120; anything else → None."""
    if folder_name.startswith(CHECKPOINT_PREFIX) and folder_name[len(CHECKPOINT_PREFIX) :].isdigit():
        return int(folder_name[len(CHECKPOINT_PREFIX) :])
    return None
