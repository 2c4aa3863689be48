"""``status`` / ``watch`` show training progress from the run's metrics.json in object storage (SeaweedFS) with
elapsed time, ETA, restarts, last committed checkpoint and dollars over every launch."""

from __future__ import annotations

import io
import json

import pytest

from launch.jobs.watch import CLEAR, duration, one_line, progress, progress_lines, watch
from qa_train.contract import RunLayout, RunMetrics, RunReport, RunState, StageResult
from qa_train.storage import RunStore
from tests.test_submit_cli import _cloud_job, _fake_clouds, _main


def _metrics(step: int = 50, max_steps: int = 200, t0: float = 10_000.0) -> RunMetrics:
    hist = [{"step": s, "t": t0 + 2.0 * s, "loss": 3.0 - s / 100, "lr": 1e-4, "tokens_per_second": 900.0}
            for s in range(1, step + 1)]  # fmt: skip
    return RunMetrics("run", step=step, max_steps=max_steps, epoch=0.25, train_loss=hist[-1]["loss"],
                      eval_loss=2.61, learning_rate=1e-4, tokens_per_second=900.0, started_at=t0,
                      updated_at=t0 + 2.0 * step, history=hist, segments=[{"start_step": 0, "started_at": t0}])  # fmt: skip


def test_progress_numbers_eta_and_cost_over_every_launch():
    m = _metrics()
    launches = [
        {"started_at": 9_000.0, "ended_at": 9_900.0, "price_per_hour": 0.4},  # preempted
        {"started_at": 9_950.0, "ended_at": None, "price_per_hour": 0.5},
    ]
    doc = {"launches": launches, "restarts": 1, "cost_usd": 0.35, "report": {"last_committed_step": 40}}
    now = m.updated_at + 5
    p = progress(doc, m, now)
    assert p["elapsed_s"] == pytest.approx(now - 9_000.0)
    assert p["eta_s"] == pytest.approx((200 - 50) * 2.0)  # 0.5 step/s over the last points
    assert (p["step"], p["max_steps"], p["percent"], p["restarts"]) == (50, 200, 25.0, 1)
    assert p["price_per_hour"] == 0.5 and p["last_committed_step"] == 40 and p["metrics_age_s"] == 5.0
    head, train = progress_lines(p)
    assert "$0.350 so far (now $0.500/h)" in head and "last committed checkpoint: step 40" in head
    assert "step 50/200 (25.0%)" in train and "ETA 5m00s" in train and "loss 2.5000" in train
    assert "eval loss 2.6100" in train and "lr 1.00e-04" in train and "900 tok/s" in train
    # a job that ended: elapsed stops at the last launch's end
    ended = progress({**doc, "launches": [launches[0], {**launches[1], "ended_at": 10_000.0}]}, None, now)
    assert ended["elapsed_s"] == 1_000.0 and "step" not in ended
    assert duration(3725) == "1h02m" and duration(None) == "-"


def test_status_and_watch_read_metrics_from_the_run(tmp_path, s3, monkeypatch, capsys):
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])
    _fake_clouds(monkeypatch, {"vast": cloud})
    job = _cloud_job(tmp_path, s3, run_name="watched")
    argv = ["--gpu", "a6000", "--job", str(job), "--backend", "vast", "--job_id", "w-1", "--keep_instance"]
    assert _main(monkeypatch, tmp_path, argv) == 0
    capsys.readouterr()
    store = RunStore(RunLayout.of(s3.uri("runs"), "watched"), s3.endpoint_url)
    assert _main(monkeypatch, tmp_path, ["status", "w-1"]) == 0
    assert "training: no metrics yet" in capsys.readouterr().out
    m = _metrics()
    store.put_text("metrics.json", m.to_json())
    store.write_report(RunReport("watched", RunState.RUNNING, [StageResult("train")], last_committed_step=40))

    assert _main(monkeypatch, tmp_path, ["status", "w-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    p = doc["progress"]
    assert (p["step"], p["max_steps"], p["train_loss"], p["eval_loss"]) == (50, 200, m.train_loss, 2.61)
    assert p["last_committed_step"] == 40 and p["restarts"] == 0 and p["launches"] == 1
    assert p["cost_usd"] == doc["cost_usd"] and p["price_per_hour"] == 0.4 and not doc["terminal"]
    assert _main(monkeypatch, tmp_path, ["status", "w-1"]) == 0
    text = capsys.readouterr().out
    assert "step 50/200 (25.0%)" in text and "last committed checkpoint: step 40" in text

    # watch (not a terminal here): one line per refresh until the job ends; the run finishes meanwhile
    def finish(_s: float) -> None:
        done = RunMetrics.from_json(m.to_json())
        done.step, done.finished = 200, True
        store.put_text("metrics.json", done.to_json())
        store.write_report(RunReport("watched", RunState.SUCCEEDED, [StageResult("train", 0)]))

    monkeypatch.setattr("time.sleep", finish)
    assert _main(monkeypatch, tmp_path, ["watch", "w-1", "--interval", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "w-1  RUNNING  step 50/200" in lines[0] and "ETA" in lines[0]
    assert "SUCCEEDED  step 200/200" in lines[1] and "done" in lines[1] and CLEAR not in "".join(lines)
    # --json: one document per line; the job is terminal now, so one refresh
    assert _main(monkeypatch, tmp_path, ["watch", "w-1", "--json"]) == 0
    (only,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(only)["progress"]["training_finished"] is True
    assert _main(monkeypatch, tmp_path, ["watch", "w-1", "--interval", "0"]) == 2  # strict: refused
    assert _main(monkeypatch, tmp_path, ["watch", "w-1", "--intervl", "3"]) == 2


def test_watch_redraws_on_a_terminal():
    docs = iter(
        [{"job_id": "j", "state": "RUNNING"}, {"job_id": "j", "state": "SUCCEEDED", "terminal": True}]
    )
    out = io.StringIO()
    last = watch(lambda: next(docs), lambda d: [f"job {d['job_id']}: {d['state']}"], out=out, tty=True,
                 sleep=lambda s: None)  # fmt: skip
    assert last["state"] == "SUCCEEDED"
    assert out.getvalue() == f"{CLEAR}job j: RUNNING\n{CLEAR}job j: SUCCEEDED\n"
    assert "j  RUNNING" in one_line({"job_id": "j", "state": "RUNNING", "restarts": 0})


def test_dry_run_and_offers_state_hours_dollars_and_the_rate_source(tmp_path, monkeypatch, capsys):
    from launch.memory import ORIGINAL_TOKENS_PER_EPOCH
    from tests.test_controller import FakeCompute, offer

    assert (
        _main(monkeypatch, tmp_path, ["--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--dry_run"])
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "estimated training:" in err and "35% MFU" in err and "no measured number in bench/RESULTS.md" in err
    )
    _fake_clouds(monkeypatch, {"vast": FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])})
    argv = ["offers", "--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--backend", "vast"]
    assert _main(monkeypatch, tmp_path, [*argv, "--as_json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    from qa_train.spec import load_job

    epochs = load_job("jobs/mistral-qa-lora.yaml").training.num_train_epochs
    tokens = ORIGINAL_TOKENS_PER_EPOCH * epochs  # the job gives no approx_train_tokens
    assert row["est_hours"] == pytest.approx(tokens / row["est_tokens_per_second"] / 3600, rel=1e-3)
    assert row["est_cost"] == pytest.approx(0.4 * row["est_hours"], abs=0.01) and "MFU" in row["est_source"]
    assert _main(monkeypatch, tmp_path, argv) == 0
    assert "tokens/s: peak 155 TFLOPs × 35% MFU" in capsys.readouterr().out
