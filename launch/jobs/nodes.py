"""``submit --nodes N``: which backends can run a group of machines, and why the others cannot.

Only RunPod provisions and wires several nodes for us (Instant Clusters: ``launch/backends/runpod/clusters.py``);
a group on a cloud we do not provision goes through ``export --to skypilot|dstack|kubeflow``.
"""

from __future__ import annotations

WHY_NOT = {
    "vast": "vast.ai overlay networks work only inside one physical cluster and inject no node variables, and no "
    "engine drives them",
    "local": "local Docker is one machine",
    "cheapest": "only RunPod Instant Clusters provision several nodes",
}
CLUSTER_BACKEND = "runpod-cluster"  # the compute (and recorded backend) of a RunPod Instant Cluster


def nodes_problem(nodes: int, backend: str | None, controlled: bool, interruptible: bool) -> str | None:
    """The one line that refuses ``--nodes`` as asked, or ``None``. ``controlled``: --managed / --detach."""
    if nodes < 1:
        return f"--nodes must be >= 1 (got {nodes})"
    if nodes == 1:
        return None
    backend = backend or "cheapest"
    if backend != "runpod":
        why = WHY_NOT.get(backend, "only RunPod Instant Clusters provision several nodes")
        return (f"--nodes {nodes} runs only on --backend runpod (Instant Clusters): {why}; for other clusters use "
                "`export --to skypilot|dstack|kubeflow`")  # fmt: skip
    if interruptible:
        return "--nodes > 1 on RunPod: Instant Clusters are on-demand only; drop --interruptible"
    if not controlled:
        return (f"--nodes {nodes} needs --managed or --detach: a cluster does not stop itself, its controller "
                "deletes it when the run report is final")  # fmt: skip
    return None
