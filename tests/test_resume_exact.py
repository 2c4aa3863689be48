"""Exact continuation (issue 13 item 4): N steps uninterrupted vs N steps with a SIGKILL after the first
committed checkpoint and a resume from S3 on a fresh output directory; the per-step losses must match.

Deterministic CPU setup: tiny llama, fp32, fixed seed, --dataloader_num_workers 0, packing on (the shipped jobs'
default), gradient accumulation 2, and more steps than one epoch holds (the sampler's epoch seeding and the
skipped batches of a resumed epoch are both exercised).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from qa_train.storage import S3Location
from qa_train.sync.remote import list_run
from tests.test_sync_train import Proc, first_commit, step_losses

pytestmark = pytest.mark.slow
STEPS = 14


def cmd(model: Path, data: Path, out: Path, sync_to: str, run_name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--max_steps", str(STEPS), "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--packing", "True",
        "--model_max_length", "512", "--report_to", "none", "--use_cpu", "True", "--seed", "7",
        "--dataloader_num_workers", "0", "--bf16", "False", "--learning_rate", "1e-3", "--disable_tqdm", "True",
        "--sync_to", sync_to, "--run_name", run_name, *extra,
    ]  # fmt: skip


class GroupProc(Proc):
    """A ``Proc`` in its own process group: SIGKILL reaches every process (the deepspeed launcher and its
    rank), as when a machine vanishes."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        import subprocess
        import threading

        from tests.conftest import REPO

        self.lines = []
        self.p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, start_new_session=True)  # fmt: skip
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def kill_tree(self) -> None:
        """SIGKILL the group and every process below it, also those in a session of their own (torchrun's
        agent starts each rank so): a machine that vanishes takes them all; left alive, a rank waits in a
        collective for ever."""
        import os

        below = descendants(self.p.pid)
        os.killpg(self.p.pid, signal.SIGKILL)
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: pid → parent)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, par in parents.items() if par in frontier]
        found += kids
        frontier = kids
    return found


def kill_after_first_commit(proc: Proc, client, bucket: str, prefix: str, timeout: float = 300) -> None:
    import os

    if first_commit(proc, client, bucket, prefix, timeout):
        if isinstance(proc, GroupProc):
            proc.kill_tree()
        else:
            os.killpg(proc.p.pid, signal.SIGKILL)
    proc.wait()
    assert proc.p.returncode == -signal.SIGKILL, f"finished before the kill:\n{proc.output[-3000:]}"


def test_losses_after_sigkill_and_resume_from_s3_match_an_uninterrupted_run(
    s3, tiny_llama, records_file, tmp_path
):
    env = {**s3.env, "PYTHONUNBUFFERED": "1"}
    sync_to = s3.uri("runs")
    ref = Proc(cmd(tiny_llama, records_file, tmp_path / "ref", sync_to, "ref"), env)
    assert ref.wait() == 0, ref.output[-3000:]
    ref_losses = step_losses(tmp_path / "ref" / "trainer_state.json")
    assert sorted(ref_losses) == list(range(1, STEPS + 1))
    epochs = json.loads((tmp_path / "ref" / "trainer_state.json").read_text())["epoch"]
    assert epochs > 1, f"the run must cross an epoch boundary (epoch {epochs})"

    victim = GroupProc(cmd(tiny_llama, records_file, tmp_path / "first", sync_to, "job"), env)
    kill_after_first_commit(victim, s3.client(), s3.bucket, "runs/job/checkpoint-")
    run = S3Location.parse(s3.uri("runs/job"))
    newest = max(f.step for f in list_run(s3.client(), run) if f.committed and f.step is not None)
    assert newest < STEPS

    resumed = Proc(cmd(tiny_llama, records_file, tmp_path / "second", sync_to, "job"), env)
    assert resumed.wait() == 0, resumed.output[-3000:]
    assert f"Resuming from checkpoint-{newest} (" in resumed.output
    losses = step_losses(tmp_path / "second" / "trainer_state.json")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-6), (step, losses, ref_losses)


ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    "bf16": {"enabled": False},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
}


def test_zero3_sharded_checkpoint_resumed_from_s3_continues_the_same_losses(
    s3, tiny_llama, records_file, tmp_path
):
    """The same kill -9 / resume on one DeepSpeed ZeRO-3 rank (CPU): the sharded checkpoint (global_step*/
    *_optim_states.pt, zero_pp_rank_*) round-trips through S3 and training continues on the same losses."""
    import os

    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps(ZERO3))
    env = {**s3.env, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    sync_to = s3.uri("runs")

    def ds_cmd(out: Path, run_name: str) -> list[str]:
        port = str(29500 + (os.getpid() + len(run_name) + len(str(out))) % 1000)
        train = cmd(tiny_llama, records_file, out, sync_to, run_name, "--deepspeed", str(ds))
        return ["deepspeed", "--num_gpus", "1", "--master_port", port, "--module", *train[2:]]

    ref = Proc(ds_cmd(tmp_path / "ref", "zref"), env)
    assert ref.wait(timeout=900) == 0, ref.output[-3000:]
    ref_losses = step_losses(tmp_path / "ref" / "trainer_state.json")

    victim = GroupProc(ds_cmd(tmp_path / "first", "zjob"), env)
    kill_after_first_commit(victim, s3.client(), s3.bucket, "runs/zjob/checkpoint-", timeout=600)
    run = S3Location.parse(s3.uri("runs/zjob"))
    newest = max(f.step for f in list_run(s3.client(), run) if f.committed and f.step is not None)
    assert newest < STEPS
    keys = s3.keys(f"runs/zjob/checkpoint-{newest}/")
    assert any("optim_states" in k for k in keys), keys

    resumed = Proc(ds_cmd(tmp_path / "second", "zjob"), env)
    assert resumed.wait(timeout=900) == 0, resumed.output[-3000:]
    assert f"Resuming from checkpoint-{newest} (" in resumed.output
    losses = step_losses(tmp_path / "second" / "trainer_state.json")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-4, abs=1e-5), (step, losses, ref_losses)
