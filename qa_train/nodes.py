"""Which node of a multi-node group this container is, from the variables the platform that started it sets,
as torchrun flags with static rendezvous (``--nnodes --node_rank --master_addr --master_port
--nproc_per_node``).

Why static: RunPod Instant Clusters do not support c10d rendezvous, and every engine below already hands each
node its rank and the master's address, so nothing has to be negotiated. Each platform's names and defaults were
checked against its own documentation (README, "Multi-node: the platforms' variables"):

- Kubeflow Trainer / PyTorchJob: ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``
  (29500), ``PET_NPROC_PER_NODE`` (a number or ``auto``).
- SkyPilot: ``SKYPILOT_NUM_NODES``, ``SKYPILOT_NODE_RANK``, ``SKYPILOT_NODE_IPS`` (one IP a line, the first is
  the head), ``SKYPILOT_NUM_GPUS_PER_NODE``; no port.
- dstack: ``DSTACK_NODES_NUM``, ``DSTACK_NODE_RANK``, ``DSTACK_MASTER_NODE_IP``, ``DSTACK_GPUS_PER_NODE``; no port.
- RunPod Instant Clusters: ``NUM_NODES``, ``NODE_RANK``, ``PRIMARY_ADDR`` / ``MASTER_ADDR``, ``PRIMARY_PORT`` /
  ``MASTER_PORT``, ``NUM_TRAINERS`` (GPUs per node); NCCL must use ``ens1`` (``NCCL_SOCKET_IFNAME``).
- plain: ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (29500), ``NPROC_PER_NODE``.

The first platform whose variables are present wins, in that order (dstack provisions RunPod Instant Clusters,
so a dstack node carries RunPod's variables too; RunPod's ``MASTER_ADDR`` / ``NODE_RANK`` are the plain names).
A platform that gives no master port gets ``QA_MASTER_PORT`` or torchrun's default 29500. Present but partial or
inconsistent variables are one :class:`NodeEnvError` naming the variable, before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_MASTER_PORT = 29500  # torchrun's default; Kubeflow Trainer injects the same value
ENV_MASTER_PORT = "QA_MASTER_PORT"  # the port for platforms that give none (SkyPilot, dstack)
RUNPOD_NCCL_IFNAME = "ens1"  # RunPod: PRIMARY_ADDR is on ens1; eth0 (172.x) is internet only

_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]+$")


class NodeEnvError(ValueError):
    """The platform's node variables are partial or inconsistent (the message names the variable)."""


@dataclass(frozen=True)
class NodeEnv:
    """One node's place in the group, and what its launcher needs."""

    platform: str
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    nproc_per_node: str  # a count, or "auto" (Kubeflow's default: torchrun counts the GPUs)
    env: dict[str, str] = field(default_factory=dict)  # to add to the ranks' environment (NCCL interface)

    def torchrun_flags(self) -> list[str]:
        """Static rendezvous: torchrun's default backend when --master_addr/--master_port are given."""
        return [
            "--nnodes", str(self.nnodes),
            "--node_rank", str(self.node_rank),
            "--master_addr", self.master_addr,
            "--master_port", str(self.master_port),
            "--nproc_per_node", self.nproc_per_node,
        ]  # fmt: skip


@dataclass(frozen=True)
class _Platform:
    name: str
    nnodes: str
    node_rank: str
    addr: tuple[str, ...]  # the first one set wins
    port: tuple[str, ...]  # empty: the platform gives none
    nproc: str | None

    def present(self, env: Mapping[str, str]) -> bool:
        names = (self.nnodes, self.node_rank, *self.addr, *self.port)
        return any(env.get(n) for n in names)


# Detection order: the engine that started the command first (see the module docstring).
PLATFORMS: tuple[_Platform, ...] = (
    _Platform("kubeflow", "PET_NNODES", "PET_NODE_RANK", ("PET_MASTER_ADDR",), ("PET_MASTER_PORT",),
              "PET_NPROC_PER_NODE"),
    _Platform("skypilot", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK", ("SKYPILOT_NODE_IPS",), (),
              "SKYPILOT_NUM_GPUS_PER_NODE"),
    _Platform("dstack", "DSTACK_NODES_NUM", "DSTACK_NODE_RANK", ("DSTACK_MASTER_NODE_IP",), (),
              "DSTACK_GPUS_PER_NODE"),
    _Platform("runpod", "NUM_NODES", "NODE_RANK", ("PRIMARY_ADDR", "MASTER_ADDR"), ("PRIMARY_PORT", "MASTER_PORT"),
              "NUM_TRAINERS"),
    _Platform("plain", "NNODES", "NODE_RANK", ("MASTER_ADDR",), ("MASTER_PORT",), "NPROC_PER_NODE"),
)  # fmt: skip


def _present_runpod(env: Mapping[str, str]) -> bool:
    # MASTER_ADDR / MASTER_PORT / NODE_RANK alone are the plain names: RunPod is told by its own ones
    return any(env.get(n) for n in ("NUM_NODES", "PRIMARY_ADDR", "PRIMARY_PORT", "NUM_TRAINERS"))


def _present_plain(env: Mapping[str, str]) -> bool:
    # MASTER_ADDR / MASTER_PORT alone are common on one machine (torch's env:// init): not a group
    return any(env.get(n) for n in ("NNODES", "NODE_RANK"))


def _int(env: Mapping[str, str], name: str, platform: str, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        raise NodeEnvError(f"{name} is not set ({platform} node variables are partial)")
    try:
        value = int(raw.strip())
    except ValueError:
        raise NodeEnvError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise NodeEnvError(f"{name}={value} must be >= {minimum}")
    return value


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for n in names:
        if env.get(n, "").strip():
            return n, env[n].strip()
    return None


def _host(name: str, value: str) -> str:
    if not _HOST_RE.match(value):
        raise NodeEnvError(f"{name}={value!r} is not a host name or IP address")
    return value


def _port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise NodeEnvError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise NodeEnvError(f"{name}={port} is not a port number (1-65535)")
    return port


def _nproc(env: Mapping[str, str], name: str | None, default: int) -> str:
    raw = (env.get(name) or "").strip() if name else ""
    if not raw:
        return str(max(default, 1))
    if raw in ("auto", "gpu", "cpu"):  # torchrun resolves these itself (Kubeflow's PET_NPROC_PER_NODE=auto)
        return raw
    try:
        n = int(raw)
    except ValueError:
        raise NodeEnvError(f"{name}={raw!r} is not a process count (a number or 'auto')") from None
    if n < 0:
        raise NodeEnvError(f"{name}={n} must be >= 0")
    return str(n) if n > 0 else str(max(default, 1))  # 0 GPUs (a CPU node): the plan's process count


def detect(env: Mapping[str, str], default_nproc: int = 1) -> NodeEnv | None:
    """This node's group from ``env``, or ``None`` when no platform's node variables are set (one machine).

    ``default_nproc`` (the plan's GPU count) is used when the platform does not say how many processes a node
    runs, or says 0 GPUs (CPU nodes)."""
    for p in PLATFORMS:
        present = {"runpod": _present_runpod, "plain": _present_plain}.get(p.name, p.present)
        if present(env):
            return _parse(p, env, default_nproc)
    return None


def _parse(p: _Platform, env: Mapping[str, str], default_nproc: int) -> NodeEnv:
    nnodes = _int(env, p.nnodes, p.name, 1)
    rank = _int(env, p.node_rank, p.name, 0)
    if rank >= nnodes:
        raise NodeEnvError(f"{p.node_rank}={rank} must be < {p.nnodes}={nnodes}")
    got = _first(env, p.addr)
    if got is None:
        raise NodeEnvError(f"{' or '.join(p.addr)} is not set ({p.name} node variables are partial)")
    addr_name, addr = got
    if p.name == "skypilot":  # one IP a line; the first is the head node
        ips = [line.strip() for line in addr.splitlines() if line.strip()]
        if len(ips) != nnodes:
            raise NodeEnvError(f"SKYPILOT_NODE_IPS lists {len(ips)} IPs but SKYPILOT_NUM_NODES={nnodes}")
        addr = ips[0]
    addr = _host(addr_name, addr)
    if p.name == "dstack" and env.get("DSTACK_NODES_IPS", "").strip():
        ips = [line.strip() for line in env["DSTACK_NODES_IPS"].splitlines() if line.strip()]
        if len(ips) != nnodes:
            raise NodeEnvError(f"DSTACK_NODES_IPS lists {len(ips)} IPs but DSTACK_NODES_NUM={nnodes}")
    port_got = _first(env, p.port) if p.port else _first(env, (ENV_MASTER_PORT,))
    port = _port(*port_got) if port_got else DEFAULT_MASTER_PORT
    if p.port and port_got is None and p.name == "kubeflow":
        raise NodeEnvError("PET_MASTER_PORT is not set (kubeflow node variables are partial)")
    extra: dict[str, str] = {}
    if p.name == "runpod" and not env.get("NCCL_SOCKET_IFNAME"):
        extra["NCCL_SOCKET_IFNAME"] = RUNPOD_NCCL_IFNAME
    return NodeEnv(p.name, nnodes, rank, addr, port, _nproc(env, p.nproc, default_nproc), extra)


def torchrun_prefix(
    python: str, env: Mapping[str, str], default_nproc: int
) -> tuple[list[str], dict[str, str]] | None:
    """``[python, -m, torch.distributed.run, <flags>]`` and the env to add, when this node is part of a
    multi-node group; ``None`` on one machine (one node, or no platform variables)."""
    node = detect(env, default_nproc)
    if node is None or node.nnodes == 1:
        return None
    return [python, "-m", "torch.distributed.run", *node.torchrun_flags()], dict(node.env)


def group_train_command(
    python: str, env: Mapping[str, str], num_gpus: int, train_args: list[str]
) -> list[str] | None:
    """The train stage's command on a node of a multi-node group: torchrun with this node's flags running
    ``qa_train train`` (a ``--deepspeed`` config among ``train_args`` works the same under torchrun), behind
    ``env K=V`` for what the platform needs (RunPod's NCCL interface); ``None`` on one machine."""
    got = torchrun_prefix(python, env, num_gpus)
    if got is None:
        return None
    cmd, extra = got
    head = ["env", *(f"{k}={v}" for k, v in sorted(extra.items()))] if extra else []
    return [*head, *cmd, "-m", "qa_train", "train", *train_args]
