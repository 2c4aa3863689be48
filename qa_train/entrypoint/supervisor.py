"""Child process groups: a stage's commands run in their own group, and signals are forwarded to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qa_train.entrypoint.stages import Stage
from qa_train.fsutil import atomic_write_text


class Child:
    """Forward SIGTERM/SIGINT (``docker stop``, a cloud shutting down) to the running stage, then let it use
    the grace period.

    The stage runs in its own process group and the signal goes to the whole group: the deepspeed launcher
    does not pass SIGTERM on to its ranks, and every rank must take part in a ZeRO-3 save. The train stage
    then saves and commits a checkpoint if that fits its ``--sigterm_grace_s`` (the upload worker ignores the
    signal). This process waits for every process of the group to end and only then exits (``SystemExit``:
    the report stays ``running``); it never kills the stage itself before the grace ends — docker / the cloud
    SIGKILLs what is left then. A second signal escalates to SIGKILL (a user pressing ^C twice).
    """

    proc: subprocess.Popen | None = None
    signalled: int | None = None
    GROUP_WAIT_S = (
        600.0  # upper bound outside a container (inside, the SIGKILL at the grace's end comes first)
    )

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        first = cls.signalled is None
        cls.signalled = signum
        if cls.proc is not None and cls.proc.poll() is None:
            try:
                os.killpg(cls.proc.pid, signum if first else signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if first:
                print(f"[run] signal {signum}: forwarded to the stage; waiting for it to end", file=sys.stderr,
                      flush=True)  # fmt: skip
            return  # the main thread's wait() returns when the stage has ended
        raise SystemExit(128 + signum)

    @classmethod
    def wait_group(cls, pgid: int) -> None:
        """Until no process of the stage's group is left (reaping the ones re-parented to us as PID 1)."""
        deadline = time.monotonic() + cls.GROUP_WAIT_S
        while time.monotonic() < deadline:
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def run_steps(stage: Stage, only_prep: bool = False) -> int:
    """Run the stage's steps in order until one fails (its exit code). ``only_prep``: a stage done earlier
    still runs its idempotent preparation (the steps with ``skip_if``: the tiny base model)."""
    for step in stage.steps:
        if only_prep and not step.skip_if:
            continue
        if step.skip_if and Path(step.skip_if).exists():
            cmd = step.argv
            print(f"[run] {step.skip_if} exists; skipping {cmd[3] if len(cmd) > 3 else cmd[0]}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        for path, text in step.files:  # the train arguments file
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        code = run_child(step.argv)
        if code != 0:
            return code
    return 0


def run_child(cmd: list[str]) -> int:
    """One command in its own process group, output streamed as it comes; after a forwarded signal, wait for
    the whole group and exit ``128 + signal`` (``SystemExit``)."""
    print("[run] $ " + " ".join(cmd), file=sys.stderr, flush=True)  # holds no secret: those are env only
    try:
        Child.proc = subprocess.Popen(cmd, start_new_session=True)  # inherits stdout/stderr
    except OSError as e:
        print(f"[run] cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127
    code = Child.proc.wait()
    if Child.signalled is not None:
        Child.wait_group(Child.proc.pid)
        Child.proc = None
        print(f"[run] stage ended (exit {code}) after signal {Child.signalled}", file=sys.stderr, flush=True)
        raise SystemExit(128 + Child.signalled)
    Child.proc = None
    return code
