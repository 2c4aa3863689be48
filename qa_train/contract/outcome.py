"""How a run ends, as data both sides share: the container's exit codes and the reasons a job stops.

Why enums: the codes were literals in three modules and the launcher found causes by reading message text (the
budget warning by a text prefix). A reason is a value the controller records with every decision; the
recovery policy, the registry and ``status`` read the value, and the text beside it is only for people.
"""

from __future__ import annotations

import signal
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """What ``python -m qa_train`` (and each of its stages) exits with."""

    OK = 0
    FAILED = 1  # a stage failed: a training, merge or eval error (never relaunched)
    USAGE = 2  # bad input: the spec, a flag, an input URI (nothing was started)
    STORAGE = 3  # object storage or the network cannot be used (the spec, an input, a sync)
    SIGKILL = 128 + signal.SIGKILL  # 137: killed from outside (docker kill, the host going down)
    SIGTERM = 128 + signal.SIGTERM  # 143: asked to stop (preemption, docker stop); never a final outcome

    @classmethod
    def killed(cls, code: int | None) -> bool:
        """Killed by a signal from outside: the machine lost the job, the job itself did not fail."""
        return code in (cls.SIGKILL, cls.SIGTERM)


class FailureReason(StrEnum):
    """Why a job (or one launch of it) stopped, in the spirit of dstack's ``JobTerminationReason``."""

    TRAINING_ERROR = "training_error"  # a stage failed (exit 1 or another code the run chose)
    BAD_INPUT = "bad_input"  # the container refused its input (exit 2)
    STORAGE_ERROR = "storage_error"  # the container could not use object storage or the network (exit 3)
    INSTANCE_LOST = "instance_lost"  # preempted, stopped, failed or gone before the run finished
    INSTANCE_KILLED = "instance_killed"  # the container was killed by a signal (exit 137 / 143)
    NOT_READY = "not_ready"  # the instance was not running within the ready deadline
    MAX_RESTARTS = "max_restarts"  # the machine was lost again with no restart left
    NO_CAPACITY = "no_capacity"  # no offer matched for longer than the capacity wait
    REQUEST_REJECTED = "request_rejected"  # the cloud refused the request itself (bad image, quota)
    LAUNCH_FAILED = "launch_failed"  # an unmanaged launch could not be started
    UNMANAGED_LOST = "unmanaged_lost"  # an unmanaged job's instance ended without a final report
    MAX_COST = "max_cost"  # --max_cost reached: checkpointed, then stopped (resumable)
    CANCELLED_BY_USER = "cancelled_by_user"
    SETUP_ERROR = "setup_error"  # the launcher could not prepare the run (e.g. the spec upload failed)

    @property
    def relaunchable(self) -> bool:
        """A managed job relaunches on these (while restarts are left); every other reason ends it."""
        return self in (
            FailureReason.INSTANCE_LOST,
            FailureReason.INSTANCE_KILLED,
            FailureReason.NOT_READY,
            FailureReason.STORAGE_ERROR,  # the run resumes once storage answers (no machine is blocklisted)
        )

    @classmethod
    def of_exit(cls, code: int | None) -> FailureReason:
        """The reason a stage or container that exited with ``code`` (not 0) failed."""
        if ExitCode.killed(code):
            return cls.INSTANCE_KILLED
        if code == ExitCode.USAGE:
            return cls.BAD_INPUT
        if code == ExitCode.STORAGE:
            return cls.STORAGE_ERROR
        return cls.TRAINING_ERROR
