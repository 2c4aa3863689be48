"""Each node's train outcome in object storage, so that node 0 — the one node that runs merge / eval and writes
the run report — can say which node of a multi-node group failed.

Why: with static rendezvous a rank that dies on node 1 makes every rank on node 0 fail too (a broken gloo/NCCL
connection), so node 0's own exit code cannot tell who failed. Each node writes ``nodes/node-<k>.json`` (its
train exit code) under the run's prefix when its train stage ends; node 0 reads them into ``report.group``.
A status older than node 0's own train stage is an earlier launch's and is ignored (a node's train stage can
only end after the rendezvous, which needs node 0's train stage to have started).
"""

from __future__ import annotations

import json
import time
from typing import Any

from qa_train.nodes import NodeEnv

NODES_DIR = "nodes"
CLOCK_SLACK_S = 5.0  # the nodes' clocks may differ by this much


def status_name(node_rank: int) -> str:
    return f"{NODES_DIR}/node-{node_rank}.json"


def status_text(node_rank: int, exit_code: int, instance: str | None, now: float | None = None) -> str:
    """What node ``node_rank`` writes when its train stage ends."""
    body = {"node_rank": node_rank, "exit_code": exit_code, "instance_id": instance,
            "written_at": time.time() if now is None else now}  # fmt: skip
    return json.dumps(body, sort_keys=True) + "\n"


def group_fields(node: NodeEnv) -> dict[str, Any]:
    """The group as the report states it before any node's outcome is known."""
    per = int(node.nproc_per_node) if node.nproc_per_node.isdigit() else None
    return {
        "nnodes": node.nnodes,
        "node_rank": node.node_rank,
        "nproc_per_node": node.nproc_per_node,
        "world_size": per * node.nnodes if per is not None else None,
        "platform": node.platform,
        "master_addr": node.master_addr,
        "nodes": [],
        "failed_nodes": [],
    }


def read_statuses(
    get_text: Any, nnodes: int, since: float, own_code: int, wait_s: float = 0.0, poll_s: float = 1.0
) -> list[dict[str, Any]]:
    """Each node's train outcome as node 0 sees it: node 0's own ``own_code``, the others from storage
    (``get_text(name) -> str | None``), waiting up to ``wait_s`` for the ones not written yet; a node whose
    status never came is ``exit_code: None`` (it died without a word, or storage could not be read)."""
    deadline = time.monotonic() + wait_s
    found: dict[int, dict[str, Any]] = {0: {"node_rank": 0, "exit_code": own_code}}
    while True:
        for k in range(1, nnodes):
            if k in found:
                continue
            try:
                text = get_text(status_name(k))
                doc = json.loads(text) if text else None
            except Exception:  # noqa: BLE001 - unreadable: unknown, as if not written
                doc = None
            if isinstance(doc, dict) and float(doc.get("written_at") or 0) >= since - CLOCK_SLACK_S:
                found[k] = {"node_rank": k, "exit_code": doc.get("exit_code")}
        if len(found) == nnodes or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return [found.get(k, {"node_rank": k, "exit_code": None}) for k in range(nnodes)]


def failed_nodes(statuses: list[dict[str, Any]]) -> list[int]:
    """Nodes whose train stage failed or never reported (``exit_code`` None: died without a word). A rank
    lost on one node usually fails the others too; a node that never reported is the likely first one."""
    return [s["node_rank"] for s in statuses if s["exit_code"] != 0]
