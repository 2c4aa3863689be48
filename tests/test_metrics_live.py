"""Live metrics (qa_train/metrics.py): metrics.json locally and in object storage (SeaweedFS), bounded history,
a failing store never fails training, a resumed run keeps its history up to the resume point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from qa_train.contract import METRICS_NAME, PACKING_NAME, RunLayout, RunMetrics
from qa_train.metrics import LiveMetrics, packing_profile, thin
from qa_train.storage import RunStore
from tests.conftest import REPO


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _state(step: int, max_steps: int = 100) -> TrainerState:
    st = TrainerState(global_step=step, max_steps=max_steps, epoch=step / 50)
    st.is_world_process_zero = True
    return st


def test_thin_bounds_history_and_keeps_recent_and_eval_points():
    hist = [{"step": i, "t": float(i), "loss": 1.0} for i in range(5000)]
    hist[10]["eval_loss"] = 0.5
    thin(hist, max_points=1000, keep_recent=100)
    assert len(hist) <= 1000
    steps = [p["step"] for p in hist]
    assert steps == sorted(steps) and steps[0] == 0
    assert steps[-100:] == list(range(4900, 5000))  # the newest points stay dense
    assert any(p.get("eval_loss") == 0.5 for p in hist)


def test_throttled_puts_history_and_resume_trim(s3, tmp_path):
    store = RunStore(RunLayout.of(s3.uri("runs"), "live"))
    clock, tokens = Clock(), [0]
    cb = LiveMetrics(tmp_path / "out", "live", store, tokens_seen=lambda: tokens[0], world_size=2,
                     write_every_s=0, put_every_s=15, clock=clock)  # fmt: skip
    ctl = TrainerControl()
    cb.on_train_begin(None, _state(0), ctl)
    assert cb._putter.flush(10)
    first = store.read_metrics()
    assert first.step == 0 and first.max_steps == 100 and first.segments[0]["start_step"] == 0
    for step in range(1, 11):
        clock.t += 2.0
        tokens[0] += 500
        cb.on_step_end(None, _state(step), ctl)
        cb.on_log(None, _state(step), ctl, logs={"loss": 3.0 - step / 10, "learning_rate": 1e-4 * step})
    cb.on_log(None, _state(10), ctl, logs={"eval_loss": 2.5})
    assert cb._putter.flush(10)
    local = RunMetrics.from_json((tmp_path / "out" / METRICS_NAME).read_text())
    assert local.step == 10 and local.train_loss == pytest.approx(2.0) and local.eval_loss == 2.5
    assert local.tokens_per_second == pytest.approx(500 * 2 / 2.0)  # both ranks over the 2 s window
    assert [p["step"] for p in local.history if "loss" in p] == list(range(1, 11))
    remote = store.read_metrics()
    # 20 s of training with a 15 s throttle: one PUT after the first, at t+16 (step 8), not one per step
    assert remote.step == 8 and cb._putter.puts == 2
    cb.on_train_end(None, _state(10), ctl)
    remote = store.read_metrics()
    assert remote.finished and remote.step == 10 and remote.history == local.history

    # a relaunch resumed from step 6 on a fresh disk: history up to 6 comes back from storage, a new segment
    clock.t += 100
    again = LiveMetrics(tmp_path / "fresh", "live", store, write_every_s=0, clock=clock)
    again.on_train_begin(None, _state(6), ctl)
    again.on_train_end(None, _state(6), ctl)
    m = store.read_metrics()
    assert max(p["step"] for p in m.history) == 6
    assert [s["start_step"] for s in m.segments] == [0, 6]


def test_a_failing_store_is_a_warning(tmp_path, caplog):
    from tests.fixtures_s3 import free_ports

    (port,) = free_ports(1)  # nothing listens there
    store = RunStore(RunLayout("s3://nobucket/run"), f"http://127.0.0.1:{port}", attempts=1)
    cb = LiveMetrics(tmp_path, "r", store, write_every_s=0, put_every_s=0)
    ctl = TrainerControl()
    cb.on_train_begin(None, _state(0), ctl)
    cb.on_log(None, _state(1), ctl, logs={"loss": 1.0, "learning_rate": 0.1})
    cb.on_train_end(None, _state(1), ctl)  # returns: nothing raised
    assert RunMetrics.from_json((tmp_path / METRICS_NAME).read_text()).finished
    assert any("cannot write s3://nobucket/run/metrics.json" in r.getMessage() for r in caplog.records)


def test_packing_profile_counts():
    doc = packing_profile([10, 20, 30, 100], [110, 50], max_length=128, bins=4)
    assert doc["sample_length_hist"]["counts"] == [3, 0, 0, 1] and sum(doc["fill_hist"]["counts"]) == 2
    assert doc["fill_mean"] == pytest.approx((110 + 50) / 256) and doc["num_packs"] == 2


@pytest.mark.slow
def test_training_writes_metrics_locally_and_to_the_run(s3, tiny_llama, records_file, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(tiny_llama), "--train_path",
           str(records_file), "--output_dir", str(out), "--max_steps", "4", "--logging_steps", "1",
           "--per_device_train_batch_size", "2", "--packing", "True", "--model_max_length", "256",
           "--report_to", "none", "--use_cpu", "True", "--save_strategy", "no", "--disable_tqdm", "True",
           "--sync_to", s3.uri("runs"), "--run_name", "m1"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=s3.env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    local = RunMetrics.from_json((out / METRICS_NAME).read_text())
    remote = RunStore(RunLayout.of(s3.uri("runs"), "m1")).read_metrics()
    assert remote is not None and remote.finished and remote.step == 4 and remote.max_steps == 4
    assert remote.history == local.history
    losses = [pt["loss"] for pt in remote.history if pt.get("loss") is not None]
    assert len(losses) == 4 and all(x > 0 for x in losses)
    assert all(pt.get("lr") is not None for pt in remote.history if "loss" in pt)
    assert any((pt.get("tokens_per_second") or 0) > 0 for pt in remote.history)
    summary = json.loads((out / "train_summary.json").read_text())
    packing = json.loads((out / PACKING_NAME).read_text())
    assert packing["num_packs"] == summary["num_packs"] and packing["num_samples"] == summary["num_samples"]
    assert sum(packing["sample_length_hist"]["counts"]) == summary["num_samples"]
    assert Path(out / "packing.json").exists()
