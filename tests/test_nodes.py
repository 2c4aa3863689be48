"""qa_train/nodes.py: each platform's node variables (as its docs name them) → torchrun's static-rendezvous flags;
partial or inconsistent variables → one error naming the variable."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from qa_train.nodes import NodeEnvError, detect, torchrun_prefix

# (platform, env as the platform sets it on node 1 of 2, expected flags)
TABLE = [
    (
        "kubeflow",  # pkg/runtime/framework/plugins/torch/torch.go, pkg/constants/constants.go
        {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0-0.job",
         "PET_MASTER_PORT": "29500", "PET_NPROC_PER_NODE": "auto"},
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "job-node-0-0.job", "--master_port", "29500",
         "--nproc_per_node", "auto"],
    ),
    (
        "skypilot",  # docs/source/running-jobs/distributed-jobs.rst
        {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6\n",
         "SKYPILOT_NUM_GPUS_PER_NODE": "8"},
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.5", "--master_port", "29500",
         "--nproc_per_node", "8"],
    ),
    (
        "dstack",  # mkdocs/docs/concepts/tasks.md, "System environment variables"
        {"DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": "1", "DSTACK_MASTER_NODE_IP": "10.1.0.2",
         "DSTACK_GPUS_PER_NODE": "4", "DSTACK_NODES_IPS": "10.1.0.2\n10.1.0.3", "DSTACK_GPUS_NUM": "8"},
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.1.0.2", "--master_port", "29500",
         "--nproc_per_node", "4"],
    ),
    (
        "runpod",  # instant-clusters/configuration.mdx
        {"NUM_NODES": "2", "NODE_RANK": "1", "PRIMARY_ADDR": "10.65.0.2", "PRIMARY_PORT": "5000",
         "MASTER_ADDR": "10.65.0.2", "MASTER_PORT": "5000", "NUM_TRAINERS": "8", "NODE_ADDR": "10.65.0.3",
         "WORLD_SIZE": "16", "HOST_NODE_ADDR": "10.65.0.2:5000"},
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.65.0.2", "--master_port", "5000",
         "--nproc_per_node", "8"],
    ),
    (
        "plain",
        {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "head.local", "MASTER_PORT": "23456"},
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "head.local", "--master_port", "23456",
         "--nproc_per_node", "2"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("platform", "env", "flags"), TABLE, ids=[t[0] for t in TABLE])
def test_platform_env_to_torchrun_flags(platform: str, env: dict[str, str], flags: list[str]) -> None:
    node = detect(env, default_nproc=2)
    assert node is not None and node.platform == platform
    assert node.torchrun_flags() == flags


def test_one_machine_has_no_group() -> None:
    assert detect({}) is None
    assert detect({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "PATH": "/bin"}) is None
    # a one-node SkyPilot job sets the variables too: a group of one runs as on one machine
    one = {"SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "10.0.0.5"}
    assert detect(one) is not None and torchrun_prefix("py", one, 1) is None


def test_runpod_sets_nccl_to_the_cluster_interface_unless_set() -> None:
    env = {"NUM_NODES": "2", "NODE_RANK": "0", "PRIMARY_ADDR": "10.65.0.2", "PRIMARY_PORT": "5000"}
    got = torchrun_prefix(sys.executable, env, 8)
    assert got is not None
    cmd, extra = got
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert extra == {"NCCL_SOCKET_IFNAME": "ens1"}
    assert detect({**env, "NCCL_SOCKET_IFNAME": "ens2"}).env == {}  # type: ignore[union-attr]
    # RunPod's legacy names alone also work
    legacy = {"NUM_NODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.65.0.2", "MASTER_PORT": "5000"}
    assert detect(legacy).platform == "runpod"  # type: ignore[union-attr]


def test_engine_before_runpod_and_port_override() -> None:
    """dstack provisions RunPod Instant Clusters: its own variables describe the run."""
    env = {"DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": "0", "DSTACK_MASTER_NODE_IP": "10.1.0.2",
           "NUM_NODES": "2", "NODE_RANK": "0", "PRIMARY_ADDR": "10.65.0.2", "QA_MASTER_PORT": "12345"}  # fmt: skip
    node = detect(env)
    assert node is not None and node.platform == "dstack" and node.master_port == 12345


def test_cpu_nodes_run_the_plans_process_count() -> None:
    env = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "a\nb",
           "SKYPILOT_NUM_GPUS_PER_NODE": "0"}  # fmt: skip
    assert detect(env, default_nproc=2).nproc_per_node == "2"  # type: ignore[union-attr]


BAD = [
    ({"PET_NNODES": "2", "PET_MASTER_ADDR": "h", "PET_MASTER_PORT": "29500"}, "PET_NODE_RANK is not set"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "h"}, "PET_MASTER_PORT is not set"),
    ({"SKYPILOT_NUM_NODES": "3", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "a\nb"},
     "SKYPILOT_NODE_IPS lists 2 IPs but SKYPILOT_NUM_NODES=3"),
    ({"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "0"}, "SKYPILOT_NODE_IPS is not set"),
    ({"DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": "2", "DSTACK_MASTER_NODE_IP": "h"},
     "DSTACK_NODE_RANK=2 must be < DSTACK_NODES_NUM=2"),
    ({"DSTACK_NODES_NUM": "two", "DSTACK_NODE_RANK": "0", "DSTACK_MASTER_NODE_IP": "h"},
     "DSTACK_NODES_NUM='two' is not an integer"),
    ({"NUM_NODES": "2", "NODE_RANK": "0", "PRIMARY_PORT": "5000"}, "PRIMARY_ADDR or MASTER_ADDR is not set"),
    ({"NUM_NODES": "2", "NODE_RANK": "0", "PRIMARY_ADDR": "h", "PRIMARY_PORT": "70000"},
     "PRIMARY_PORT=70000 is not a port number"),
    ({"NUM_TRAINERS": "8"}, "NUM_NODES is not set"),
    ({"NODE_RANK": "1", "MASTER_ADDR": "h"}, "NNODES is not set"),
    ({"NNODES": "2", "NODE_RANK": "-1", "MASTER_ADDR": "h"}, "NODE_RANK=-1 must be >= 0"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h; rm -rf /"}, "MASTER_ADDR='h; rm -rf /' is not a host"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h", "NPROC_PER_NODE": "x"},
     "NPROC_PER_NODE='x' is not a process count"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m.split()[0] for _, m in BAD])
def test_partial_or_inconsistent_env_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(NodeEnvError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        detect(env)


def test_run_builds_the_train_stage_as_torchrun_on_a_node_of_a_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qa_train run: on a RunPod cluster node the train command is torchrun with that node's flags and NCCL on
    ens1; a partial set of variables is one error line and exit 2, before any stage starts."""
    from qa_train.entrypoint.cli import main
    from qa_train.entrypoint.flags import default_plan
    from qa_train.entrypoint.stages import build_stages
    from qa_train.spec import parse_job
    from qa_train.train_config import with_flags

    job = parse_job({"run_name": "r", "model": {"name_or_path": "/m"}, "data": {"train_path": "/d.json"},
                     "stages": ["train"]})  # fmt: skip
    for k, v in {
        "NUM_NODES": "2",
        "NODE_RANK": "1",
        "PRIMARY_ADDR": "10.65.0.2",
        "PRIMARY_PORT": "5000",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    step = build_stages(job, default_plan(job))[0].steps[-1]
    cmd = with_flags(step.argv, step.files)  # its train arguments file, as flags
    i = cmd.index("torch.distributed.run")
    assert cmd[:2] == ["env", "NCCL_SOCKET_IFNAME=ens1"]
    assert cmd[i + 1 : i + 11] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.65.0.2",
                                   "--master_port", "5000", "--nproc_per_node", "1"]  # fmt: skip
    assert cmd[i + 11 : i + 14] == ["-m", "qa_train", "train"] and "--model_name_or_path" in cmd
    monkeypatch.delenv("PRIMARY_ADDR")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.model_dump(mode="json") | {"output_root": str(tmp_path / "out")}))
    assert main([str(spec)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: PRIMARY_ADDR or MASTER_ADDR is not set (runpod node variables are partial)"
    )
    assert not (tmp_path / "out").exists()


ALLREDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
line = f"rank {dist.get_rank()}/{dist.get_world_size()} node {os.environ['GROUP_RANK']} sum {t.item():g}\\n"
os.write(1, line.encode())  # one write: two ranks share the pipe, and print() may split text and newline
dist.destroy_process_group()
"""


def _node_envs(platform: str, port: int) -> list[dict[str, str]]:
    """What each platform sets on node 0 and node 1 of two (loopback: both nodes are processes here)."""
    out = []
    for rank in (0, 1):
        env = {
            "kubeflow": {"PET_NNODES": "2", "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
                         "PET_MASTER_PORT": str(port), "PET_NPROC_PER_NODE": "2"},
            "skypilot": {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": str(rank),
                         "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.2", "SKYPILOT_NUM_GPUS_PER_NODE": "0",
                         "QA_MASTER_PORT": str(port)},
            "dstack": {"DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": str(rank), "DSTACK_MASTER_NODE_IP": "127.0.0.1",
                       "DSTACK_GPUS_PER_NODE": "0", "QA_MASTER_PORT": str(port)},
            "runpod": {"NUM_NODES": "2", "NODE_RANK": str(rank), "PRIMARY_ADDR": "127.0.0.1",
                       "PRIMARY_PORT": str(port), "NUM_TRAINERS": "2", "NCCL_SOCKET_IFNAME": "lo"},
            "plain": {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        }[platform]  # fmt: skip
        out.append(env)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["kubeflow", "skypilot", "dstack", "runpod", "plain"])
def test_two_nodes_form_one_group_from_each_platforms_variables(platform: str, tmp_path: Path) -> None:
    """torchrun with the flags made from each platform's variables: two 'nodes' (processes on loopback) of two
    ranks each rendezvous statically and all-reduce with gloo (1+2+3+4 = 10 on every rank)."""
    import subprocess

    from tests.fixtures_s3 import free_ports

    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    port = free_ports(1)[0]
    procs = []
    for env in _node_envs(platform, port):
        got = torchrun_prefix(sys.executable, env, default_nproc=2)
        assert got is not None
        cmd, _extra = got
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "SKYPILOT_", "DSTACK_"))}
        procs.append(subprocess.Popen([*cmd, str(script)], env={**base, "OMP_NUM_THREADS": "1", **env},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(line for o in outs for line in o.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {r}/4 node {r // 2} sum 10" for r in range(4)], outs
