"""Multi-node groups (issue 22): node 0 alone runs merge / eval and writes the run report, which covers the
group (nodes, ranks, each node's train outcome); another node runs only its train stage and exits 0."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from qa_train.contract import RunLayout, RunState
from qa_train.run import Reporter, Stage, build_stages, group_node, main, run_stages
from qa_train.spec import Plan, parse_job
from qa_train.storage import RunStore

PY = sys.executable
GROUP_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE")


def _plain(monkeypatch: pytest.MonkeyPatch, rank: int, nnodes: int = 2) -> None:
    for k in GROUP_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NNODES", str(nnodes))
    monkeypatch.setenv("NODE_RANK", str(rank))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29611")


def _job(tmp_path: Path, **kw):
    job = {"run_name": "grp", "model": {"name_or_path": "/m"}, "use_lora": True,
           "data": {"train_path": "/d.json", "hotpot_qa_dev_path": "/dev.json"},
           "stages": ["train", "merge", "eval"], "output_root": str(tmp_path / "out")}  # fmt: skip
    job.update(kw)
    return parse_job(job)


def _plan() -> Plan:
    return Plan(launcher="python", num_gpus=2, bf16=False, tf32=False, per_device_train_batch_size=1,
                gradient_accumulation_steps=1)  # fmt: skip


def test_only_node_0_gets_merge_and_eval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = _job(tmp_path)
    _plain(monkeypatch, 0)
    assert [s.name for s in build_stages(job, _plan())] == ["train", "merge", "eval"]
    _plain(monkeypatch, 1)
    (train,) = build_stages(job, _plan())
    assert train.name == "train" and "--node_rank" in train.commands[-1]
    i = train.commands[-1].index("--node_rank")
    assert train.commands[-1][i + 1] == "1"
    for k in GROUP_VARS:  # one machine: every stage, as before
        monkeypatch.delenv(k, raising=False)
    assert [s.name for s in build_stages(job, _plan())] == ["train", "merge", "eval"]


def test_print_plan_of_node_1_is_train_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through ``qa_train run``'s entry point: node 1's plan is its train stage, nothing written."""
    job = _job(tmp_path)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.model_dump(mode="json")))
    _plain(monkeypatch, 1)
    assert main([str(spec), "--print_plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in plan] == ["train"]
    _plain(monkeypatch, 0)
    assert main([str(spec), "--print_plan"]) == 0
    assert [s["stage"] for s in json.loads(capsys.readouterr().out)] == ["train", "merge", "eval"]


def _cmd(code: int, sleep: float = 0.0) -> list[str]:
    return [PY, "-c", f"import sys, time; time.sleep({sleep}); sys.exit({code})"]


def test_node_0s_report_covers_the_group_and_names_the_failed_node(
    s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Node 1's train fails (exit 7): it writes its outcome, not the shared report; node 0's train fails too
    (its peers are gone) and its report — the only one in storage — lists both nodes, their exit codes and the
    failed ones; merge never runs."""
    monkeypatch.setenv("QA_NODE_STATUS_WAIT_S", "20")
    job = _job(tmp_path, sync={"target": s3.uri("runs")})
    store = RunStore(RunLayout.of(s3.uri("runs"), "grp"))
    _plain(monkeypatch, 0)
    node0 = group_node(_plan())
    _plain(monkeypatch, 1)
    node1 = group_node(_plan())
    assert node0 is not None and node1 is not None and node1.node_rank == 1
    rep0 = Reporter(job, tmp_path / "n0", env={"CONTAINER_ID": "node-0"}, node=node0)
    merged = tmp_path / "merge-ran"
    stages0 = [Stage("train", [_cmd(1, 1.0)]), Stage("merge", [[PY, "-c", f"open({str(merged)!r}, 'w')"]])]
    out: dict[str, int] = {}
    t = threading.Thread(target=lambda: out.update(code=run_stages(stages0, None, rep0)))
    t.start()
    time.sleep(0.5)  # node 1 ends after node 0's train stage started, as a rendezvous forces
    rep1 = Reporter(job, tmp_path / "n1", env={"CONTAINER_ID": "node-1"}, node=node1)
    assert run_stages([Stage("train", [_cmd(7)])], None, rep1) == 7
    t.join(timeout=60)
    assert out["code"] == 1 and not merged.exists()
    report = store.read_report()
    assert report is not None and report.instance_id == "node-0" and report.state == RunState.FAILED
    g = report.group
    assert g is not None
    assert (g["nnodes"], g["nproc_per_node"], g["world_size"]) == (2, "2", 4)
    assert g["nodes"] == [{"node_rank": 0, "exit_code": 1}, {"node_rank": 1, "exit_code": 7}]
    assert g["failed_nodes"] == [0, 1]
    local1 = json.loads((tmp_path / "n1" / "report.json").read_text())  # node 1's own, local only
    assert local1["instance_id"] == "node-1" and local1["group"]["node_rank"] == 1


def test_a_status_from_an_earlier_launch_is_not_this_ones(
    s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A node that never wrote its status this launch is ``exit_code: None`` and named failed, even when an
    earlier launch's status (older than node 0's train stage) says 0."""
    from qa_train.node_status import status_name, status_text

    monkeypatch.setenv("QA_NODE_STATUS_WAIT_S", "1")
    job = _job(tmp_path, sync={"target": s3.uri("runs")}, stages=["train"])
    store = RunStore(RunLayout.of(s3.uri("runs"), "grp"))
    store.put_text(status_name(1), status_text(1, 0, "old", now=time.time() - 3600))
    _plain(monkeypatch, 0)
    rep0 = Reporter(job, tmp_path / "n0", node=group_node(_plan()))
    assert run_stages([Stage("train", [_cmd(3)])], None, rep0) == 3
    report = store.read_report()
    assert report is not None and report.group is not None
    assert report.group["nodes"][1] == {"node_rank": 1, "exit_code": None}
    assert report.group["failed_nodes"] == [0, 1]
