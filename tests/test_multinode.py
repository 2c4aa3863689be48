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
from qa_train.entrypoint.cli import main
from qa_train.entrypoint.reporter import Reporter
from qa_train.entrypoint.runner import run_stages
from qa_train.entrypoint.stages import Stage, Step, build_stages, group_node
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
    stages0 = [
        Stage("train", [Step(_cmd(1, 1.0))]),
        Stage("merge", [Step([PY, "-c", f"open({str(merged)!r}, 'w')"])]),
    ]
    out: dict[str, int] = {}
    t = threading.Thread(target=lambda: out.update(code=run_stages(stages0, None, rep0)))
    t.start()
    time.sleep(0.5)  # node 1 ends after node 0's train stage started, as a rendezvous forces
    rep1 = Reporter(job, tmp_path / "n1", env={"CONTAINER_ID": "node-1"}, node=node1)
    assert run_stages([Stage("train", [Step(_cmd(7))])], None, rep1) == 7
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
    assert run_stages([Stage("train", [Step(_cmd(3))])], None, rep0) == 3
    report = store.read_report()
    assert report is not None and report.group is not None
    assert report.group["nodes"][1] == {"node_rank": 1, "exit_code": None}
    assert report.group["failed_nodes"] == [0, 1]


# --- checkpoints with no shared filesystem (issue 22 item 2) ---------------------------------------------


def _node_ckpt(root: Path, node: int, local_world: int = 1) -> Path:
    """What a node's disk holds after a ZeRO-3 save of a 2-node group: its ranks' shards and RNG states;
    node 0 also everything no rank owns."""
    ck = root / "checkpoint-2"
    for r in range(node * local_world, (node + 1) * local_world):
        (ck / "global_step2").mkdir(parents=True, exist_ok=True)
        (ck / "global_step2" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(b"m%d" % r * 10)
        (ck / "global_step2" / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"o%d" % r)
        (ck / f"rng_state_{r}.pth").write_bytes(b"rng%d" % r)
    if node == 0:
        (ck / "trainer_state.json").write_text('{"global_step": 2}')
        (ck / "latest").write_text("global_step2")
        (ck / "qa_train_complete.json").write_text("{}")
    return ck


@pytest.mark.parametrize(
    ("env", "group"),
    [
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}, (2, 1, 2)),  # torchrun, node 1
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, None),  # torchrun, one node
        # the deepspeed launcher on one node, after accelerate (CPU) wrote LOCAL_WORLD_SIZE=1: once read as two
        # nodes, every upload waited for a "node 1" part that never came
        ({"WORLD_SIZE": "2", "LOCAL_SIZE": "2", "CROSS_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, None),
        ({"WORLD_SIZE": "4", "LOCAL_SIZE": "2", "CROSS_RANK": "1", "LOCAL_WORLD_SIZE": "1"}, (2, 1, 2)),
        ({"WORLD_SIZE": "1"}, None),
    ],
)
def test_the_node_group_is_read_from_either_launchers_variables(
    env: dict[str, str], group: tuple | None
) -> None:
    from qa_train.sync.group import NodeGroup, current_group

    assert current_group(env) == (None if group is None else NodeGroup(*group))


def test_another_node_rotates_its_own_local_checkpoints(tmp_path: Path) -> None:
    """The Trainer rotates on world rank 0 only: node k > 0 keeps its newest ``save_total_limit`` itself."""
    from qa_train.sync.group import prune_local_checkpoints

    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "rng_state_1.pth").write_bytes(b"x")
    (tmp_path / "sync-pending" / "checkpoint-4").mkdir(parents=True)  # a pending snapshot is not a checkpoint
    gone = prune_local_checkpoints(tmp_path, 2, protect={"checkpoint-2"})
    assert gone == ["checkpoint-4", "checkpoint-6"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint-10", "checkpoint-2", "checkpoint-8", "sync-pending"]
    assert (tmp_path / "sync-pending" / "checkpoint-4").is_dir()


def test_each_node_uploads_its_part_and_node_0_commits_once_all_are_there(s3, tmp_path: Path) -> None:
    from qa_train.storage import S3Location
    from qa_train.sync.group import (
        NodeCountError,
        NodeGroup,
        check_node_count,
        commit_when_complete,
        resume_point,
        snapshot_part,
        uncommit,
        upload_part,
    )
    from qa_train.sync.remote import is_committed
    from qa_train.sync.transfer import read_manifest

    client, run = s3.client(), S3Location.parse(s3.uri("runs/grp"))
    dest = run.child("checkpoint-2")
    g0, g1 = NodeGroup(2, 0, 1), NodeGroup(2, 1, 1)
    parts = [snapshot_part(_node_ckpt(tmp_path / f"n{k}", k), tmp_path / f"snap{k}" / "checkpoint-2", g)
             for k, g in ((0, g0), (1, g1))]  # fmt: skip
    assert sorted(p.name for p in parts[1].rglob("*") if p.is_file()) == [
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_state_1.pth",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]  # fmt: skip
    own = upload_part(client, parts[0], dest, g0)
    with pytest.raises(Exception, match="node\\(s\\) 1 did not upload their part"):
        commit_when_complete(client, dest, g0, own, timeout_s=1, poll_s=0.2)
    assert not is_committed(client, dest)  # node 0's part alone is not a checkpoint
    upload_part(client, parts[1], dest, g1)
    manifest = commit_when_complete(client, dest, g0, own, timeout_s=5)
    assert is_committed(client, dest) and manifest.group == {
        "nnodes": 2,
        "world_size": 2,
        "local_world_size": 1,
    }
    names = {f.path for f in read_manifest(client, dest).files}
    assert {"rng_state_0.pth", "rng_state_1.pth", "latest", "trainer_state.json"} <= names
    assert {"global_step2/zero_pp_rank_1_mp_rank_00_model_states.pt"} <= names

    # a resume on 2 fresh disks: each node pulls the shared files and its own rank's
    for k, g in ((0, g0), (1, g1)):
        got = resume_point(client, run, tmp_path / f"fresh{k}", g)
        assert got is not None and got[1] == dest.uri
        pulled = {p.name for p in Path(got[0]).rglob("*") if p.is_file()}
        assert f"rng_state_{k}.pth" in pulled and f"rng_state_{1 - k}.pth" not in pulled
        assert "trainer_state.json" in pulled and "latest" in pulled

    # another node count: one line naming both, before anything is downloaded
    with pytest.raises(NodeCountError, match="saved by 2 nodes, 2 ranks but this run has 1 node"):
        check_node_count(manifest, None, dest.uri)
    with pytest.raises(NodeCountError, match="saved by 2 nodes, 2 ranks but this run has 4 nodes, 4 ranks"):
        resume_point(client, run, tmp_path / "fresh4", NodeGroup(4, 0, 1))
    assert not (tmp_path / "fresh4" / "checkpoint-2").exists()

    # before a re-save of the same checkpoint: its manifest and parts go
    uncommit(client, dest)
    assert not is_committed(client, dest)
    assert not [k for k in s3.keys("runs/grp/checkpoint-2/") if "/_parts/" in k]


def test_a_one_node_resume_of_a_two_node_checkpoint_is_refused(s3, tmp_path: Path) -> None:
    from qa_train.storage import S3Location
    from qa_train.sync import StorageError
    from qa_train.sync.group import NodeGroup, commit_when_complete, snapshot_part, upload_part
    from qa_train.sync.resume import find_resume_point

    client, run = s3.client(), S3Location.parse(s3.uri("runs/grp"))
    dest = run.child("checkpoint-2")
    g0, g1 = NodeGroup(2, 0, 1), NodeGroup(2, 1, 1)
    own = upload_part(
        client, snapshot_part(_node_ckpt(tmp_path / "a", 0), tmp_path / "s0" / "c", g0), dest, g0
    )
    upload_part(client, snapshot_part(_node_ckpt(tmp_path / "b", 1), tmp_path / "s1" / "c", g1), dest, g1)
    commit_when_complete(client, dest, g0, own, timeout_s=5)
    with pytest.raises(StorageError, match=r"saved by 2 nodes, 2 ranks but this run has 1 node: resume on 2"):
        find_resume_point(client, run, tmp_path / "one", progress=False)
    assert not (tmp_path / "one" / "checkpoint-2").exists()


def _node_cmd(node: int, port: int, argv: list[str]) -> list[str]:
    """What ``qa_train run`` runs on node ``node`` of 2 (qa_train/nodes.py: static rendezvous, plain vars)."""
    return [PY, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node), "--master_addr",
            "127.0.0.1", "--master_port", str(port), "--nproc_per_node", "1", "-m", "qa_train", "train", *argv]  # fmt: skip


def _child_pid(parent: int) -> int:
    """The rank process torchrun's agent ``parent`` started (its only child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            return int(stat.parent.name)
    raise AssertionError(f"no child of {parent}")


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_resume_from_storage_with_the_same_losses(
    s3, tmp_path: Path, tiny_llama, records_file
) -> None:
    """Two loopback "nodes" (one torchrun each, one rank each, DDP LoRA), each with its own output folder:
    every committed checkpoint holds both nodes' RNG states (node 1 uploaded its own); kill -9 of both after
    the first commit; both resume on fresh folders from storage, each pulling its part; the resumed steps'
    losses equal an uninterrupted 2-node run's."""
    import os
    import signal

    from tests.test_multirank import LOSS_REL, _env, base_argv
    from tests.test_resume_exact import GroupProc
    from tests.test_sync_train import step_losses

    steps = 60  # a step takes ~0.05 s here: long enough that the kill comes well before the end
    env = {**_env(), **s3.env}
    ports = iter(range(31000 + os.getpid() % 500, 65000, 11))

    def argv(out: Path, run_name: str) -> list[str]:
        a = base_argv(tiny_llama, records_file, out, 2)
        a[a.index("--max_steps") + 1] = str(steps)
        a[a.index("--save_strategy") + 1] = "steps"
        return [*a, "--save_steps", "2", "--save_total_limit", "3", "--use_lora", "True", "--sync_to", s3.uri("runs"),
                "--run_name", run_name]  # fmt: skip

    def group(tag: str, run_name: str) -> list[GroupProc]:
        port = next(ports)
        return [GroupProc(_node_cmd(k, port, argv(tmp_path / f"{tag}{k}", run_name)), env) for k in (0, 1)]

    ref = group("ref", "ref")
    for p in ref:
        assert p.wait(timeout=1200) == 0, p.output[-4000:]
    ref_losses = step_losses(tmp_path / "ref0" / "trainer_state.json")
    assert sorted(ref_losses) == list(range(1, steps + 1))
    assert not (tmp_path / "ref1" / "trainer_state.json").exists()  # node 1 writes no final outputs

    victims = group("first", "job")
    client = s3.client()
    # The niced upload workers get the CPU only when training waits (2 shared cores): node 1's rank is stopped
    # once it queued a part, so node 0 waits in the next all-reduce, both workers run and node 0 commits; then
    # both nodes are killed. The group cannot reach a later commit in between.
    assert victims[1].wait_for("Queued upload of checkpoint-", timeout=900), victims[1].output[-3000:]
    os.kill(_child_pid(victims[1].p.pid), signal.SIGSTOP)
    assert victims[0].wait_for("qa_train.sync - Committed s3://", timeout=300), victims[0].output[-3000:]
    for v in victims:
        v.kill_tree()  # the torchrun agent and its rank (a session of its own)
    for v in victims:
        v.wait()
        assert v.p.returncode == -signal.SIGKILL, f"finished before the kill:\n{v.output[-3000:]}"
    committed = {int(k.split("/")[2].rsplit("-", 1)[1]) for k in s3.keys("runs/job/checkpoint-")
                 if k.endswith("/_manifest.json")}  # fmt: skip
    assert committed, s3.keys("runs/job/")
    step = max(committed)  # what a resume takes
    assert step < steps and "runs/job/final/_manifest.json" not in s3.keys("runs/job/")
    ckpt = f"runs/job/checkpoint-{step}"
    manifest_key = f"{ckpt}/_manifest.json"
    keys = {k.split(ckpt + "/", 1)[1] for k in s3.keys(ckpt + "/")}
    assert {"rng_state_0.pth", "rng_state_1.pth", "_parts/node-1.json", "trainer_state.json"} <= keys, keys
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=manifest_key)["Body"].read())
    assert manifest["group"]["nnodes"] == 2 and "rng_state_1.pth" in {f["path"] for f in manifest["files"]}

    resumed = group("second", "job")
    for p in resumed:
        assert p.wait(timeout=1200) == 0, p.output[-4000:]
    for k, p in enumerate(resumed):
        assert f"Resuming from checkpoint-{step} (" in p.output and f"node {k} pulls" in p.output, p.output[
            -3000:
        ]
    assert not (tmp_path / "second1" / f"checkpoint-{step}" / "rng_state_0.pth").exists()  # only its own
    losses = step_losses(tmp_path / "second0" / "trainer_state.json")
    assert sorted(losses) == list(range(1, steps + 1))
    for node in (0, 1):  # node 1 rotates its own checkpoints as the Trainer does node 0's (no shared disk)
        kept = [p.name for p in (tmp_path / f"second{node}").glob("checkpoint-*")]
        assert len(kept) <= 3, (node, kept)
    for s in range(step + 1, steps + 1):
        assert losses[s] == pytest.approx(ref_losses[s], rel=LOSS_REL), (s, losses, ref_losses)
    final = {k for k in s3.keys("runs/job/") if k.endswith("/_manifest.json")}
    assert f"runs/job/checkpoint-{steps}/_manifest.json" in final and "runs/job/final/_manifest.json" in final


@pytest.mark.slow
def test_zero3_across_two_nodes_trains_like_one_rank_with_accumulation(
    tmp_path: Path, tiny_llama, records_file
) -> None:
    """DeepSpeed ZeRO-3 (full fine-tuning) across two loopback nodes, one rank each, started as ``qa_train run``
    starts a node (torchrun with static rendezvous, ``--deepspeed`` passed to train): each node holds half of
    every parameter and optimizer state, yet per-step losses, tokens and final weights equal one rank with
    gradient accumulation 2 (the same global batch)."""
    import os

    from tests.test_multirank import _ds_config, _env, assert_same_training, base_argv, run_train
    from tests.test_resume_exact import GroupProc

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(_ds_config(3, offload=False)))
    extra = ["--use_lora", "False", "--deepspeed", str(ds)]
    run_train(1, "deepspeed", [*base_argv(tiny_llama, records_file, tmp_path / "one", 1), *extra])
    port = 33000 + os.getpid() % 500
    nodes = [GroupProc(_node_cmd(k, port, [*base_argv(tiny_llama, records_file, tmp_path / f"node{k}", 2), *extra]),
                       _env()) for k in (0, 1)]  # fmt: skip
    try:
        for p in nodes:
            assert p.wait(timeout=1200) == 0, p.output[-4000:]
    finally:
        for p in nodes:
            if p.p.poll() is None:
                p.kill_tree()
    summary = json.loads((tmp_path / "node0" / "train_summary.json").read_text())
    assert summary["world_size"] == 2, summary
    assert "Distributed: rank 0 of 2" in nodes[0].output, nodes[0].output[-3000:]
    assert_same_training(tmp_path / "one", tmp_path / "node0")
