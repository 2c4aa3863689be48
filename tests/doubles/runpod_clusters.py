"""RunPod Instant Clusters on top of the RunPod double, as github:runpod/docs documents them:
``api-reference-v2/openapi.json`` (``createCluster``, ``getCluster``, ``listClusters``, ``listClusterPods``,
``deleteCluster``, ``podAction``; schemas ``CreateClusterRequest``, ``ClusterCompute``, ``Cluster``,
``ClusterPodsSummary``, ``PodStatus``, ``ErrorResponse``) and ``instant-clusters/configuration.mdx`` (each node's
environment).

- ``POST /v2/clusters``: the body is checked as the schema says (required ``name``, ``type``, ``compute``;
  ``compute`` exactly ``gpuTypeId``, ``gpuCountPerPod`` >= 1, ``podCount`` 2..250; no key outside
  ``BaseContainerConfig`` + ``CreateClusterRequest``: ``unevaluatedProperties: false``; ``env`` string values);
  a violation is 400 ``application/problem+json`` with ``errors``. 201 with the ``Cluster``.
- every node is a pod of the RunPod double (same start/restart/log behaviour) whose container gets the create's
  env plus ``NUM_NODES``, ``NODE_RANK``, ``NODE_ADDR``, ``PRIMARY_ADDR``/``MASTER_ADDR``,
  ``PRIMARY_PORT``/``MASTER_PORT``, ``HOST_NODE_ADDR``, ``NUM_TRAINERS``, ``WORLD_SIZE`` and RunPod's pod
  variables. ``addresses`` (one per node) default to overlay IPs; a host-network test passes 127.0.0.1s and
  a free ``primary_port`` (RunPod's is 29500; on one shared host network another group may hold it).
- ``GET /v2/clusters/{id}``: ``pods.byStatus`` in PodStatus words; ``primary`` once node 0 exists.
- ``DELETE /v2/clusters/{id}``: 204, every node gone; unknown → 404 problem. ``POST /v2/pods/{id}/action``:
  ``stop`` on a cluster node (409 when not valid in its status).
- scripting: ``kill_node(cluster_id, rank)`` (a node dies: its pod EXITED).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.doubles.common import Reply, bearer
from tests.doubles.runpod_api import NO_CAPACITY, RunpodDouble, _problem

BASE_CONTAINER_KEYS = {"args", "disk", "env", "image", "ports"}
CREATE_KEYS = BASE_CONTAINER_KEYS | {
    "compute",
    "name",
    "type",
    "dataCenterIds",
    "mounts",
    "startJupyter",
    "startSsh",
}
COMPUTE_KEYS = {"gpuTypeId", "gpuCountPerPod", "podCount"}
CLUSTER_TYPES = ("APPLICATION", "TRAINING", "SLURM", "RAY")
PRIMARY_PORT = "29500"


def create_problems(body: Any) -> list[str]:
    """Why ``body`` is not a ``CreateClusterRequest`` (empty: it is one)."""
    if not isinstance(body, dict):
        return ["$: must be an object"]
    errs = [f"$: additional properties '{k}' not allowed" for k in sorted(set(body) - CREATE_KEYS)]
    errs += [f"$: missing property '{k}'" for k in ("name", "type", "compute") if k not in body]
    if "name" in body and (not isinstance(body["name"], str) or not body["name"]):
        errs.append("$.name: must be a non-empty string")
    if "type" in body and body["type"] not in CLUSTER_TYPES:
        errs.append(f"$.type: must be one of {list(CLUSTER_TYPES)}")
    c = body.get("compute")
    if "compute" in body:
        if not isinstance(c, dict):
            errs.append("$.compute: must be an object")
        else:
            errs += [
                f"$.compute: additional properties '{k}' not allowed" for k in sorted(set(c) - COMPUTE_KEYS)
            ]
            errs += [f"$.compute: missing property '{k}'" for k in sorted(COMPUTE_KEYS - set(c))]
            if "gpuTypeId" in c and (not isinstance(c["gpuTypeId"], str) or not c["gpuTypeId"]):
                errs.append("$.compute.gpuTypeId: must be a non-empty string")
            if "gpuCountPerPod" in c and not (
                isinstance(c["gpuCountPerPod"], int) and c["gpuCountPerPod"] >= 1
            ):
                errs.append("$.compute.gpuCountPerPod: must be an integer >= 1")
            if "podCount" in c and not (isinstance(c["podCount"], int) and 2 <= c["podCount"] <= 250):
                errs.append("$.compute.podCount: must be an integer between 2 and 250")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        errs.append("$.env: must be an object of strings")
    if "disk" in body and not (isinstance(body["disk"], int) and body["disk"] >= 1):
        errs.append("$.disk: must be an integer >= 1")
    if "image" in body and not isinstance(body["image"], str):
        errs.append("$.image: must be a string")
    return errs


class RunpodClusterDouble(RunpodDouble):
    def __init__(
        self, *args: Any, addresses: list[str] | None = None, primary_port: int | None = None, **kw: Any
    ):
        super().__init__(*args, **kw)
        self.clusters: dict[str, dict] = {}
        self.addresses = addresses
        self.primary_port = str(primary_port or PRIMARY_PORT)
        self._cluster_ids = itertools.count(1)

    # -- scripting -------------------------------------------------------------------------------------------
    def kill_node(self, cluster_id: str, rank: int) -> str:
        with self.lock:
            pod_id = self.clusters[cluster_id]["_pods"][rank]
            self.host.kill(pod_id)
            self.pods[pod_id].update(desiredStatus="EXITED", runtime=None, _stopped=True,
                                     lastStatusChange="node lost")  # fmt: skip
            return pod_id

    def node_env(self, cluster_id: str, rank: int) -> dict[str, str]:
        """The env a node's container was started with (create env + what RunPod adds)."""
        return dict(self.pods[self.clusters[cluster_id]["_pods"][rank]]["_env"])

    # -- API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        if not path.startswith("/v2/clusters") and not (
            path.startswith("/v2/pods/") and path.endswith("/action")
        ):
            return super().handle(method, path, query, body, headers)
        if bearer(headers) != self.api_key:
            return _problem(401, "Unauthorized", "invalid API key")
        parts = path.strip("/").split("/")  # v2 clusters [id [pods]] | v2 pods id action
        with self.lock:
            if parts[1] == "pods":
                return self._pod_action(parts[2], body)
            if len(parts) == 2 and method == "POST":
                return self._create(body)
            if len(parts) == 2 and method == "GET":
                return Reply(200, {"clusters": [self._cluster(c) for c in self.clusters.values()]})
            c = self.clusters.get(parts[2])
            if c is None:
                return _problem(404, "Not Found", "cluster not found")
            if len(parts) == 3 and method == "GET":
                return Reply(200, self._cluster(c))
            if len(parts) == 4 and parts[3] == "pods" and method == "GET":
                return Reply(200, {"pods": [self._v2_pod(p) for p in c["_pods"] if p in self.pods]})
            if len(parts) == 3 and method == "DELETE":
                for pod_id in c["_pods"]:
                    if pod_id in self.pods:
                        self._terminate(pod_id)
                del self.clusters[c["id"]]
                return Reply(204, "", "text/plain")
        return _problem(405, "Method Not Allowed", f"{method} {path}")

    def _create(self, body: Any) -> Reply:
        errs = create_problems(body)
        if errs:
            return Reply(400, {"title": "Bad Request", "status": 400, "detail": "invalid request body",
                               "errors": errs}, "application/problem+json")  # fmt: skip
        comp = body["compute"]
        g = self.gpu_types.get(comp["gpuTypeId"])
        if g is None or g["_stock"] in (None, "None"):
            return _problem(400, "Bad Request", NO_CAPACITY)
        n, per = comp["podCount"], comp["gpuCountPerPod"]
        cid = f"cluster_{next(self._cluster_ids):04d}"
        addrs = self.addresses or [f"10.65.0.{i + 2}" for i in range(n)]
        pods = []
        for rank in range(n):
            inp = {"name": f"{body['name']}-{rank}", "imageName": body.get("image", ""), "gpuTypeId": comp["gpuTypeId"],
                   "gpuCount": per, "env": [{"key": k, "value": v} for k, v in (body.get("env") or {}).items()]}  # fmt: skip
            reply = self._deploy("podFindAndDeployOnDemand", {"input": inp})
            pod_id = reply.body["data"]["podFindAndDeployOnDemand"]["id"]
            self.pods[pod_id]["_env"].update({
                "NUM_NODES": str(n), "NODE_RANK": str(rank), "NODE_ADDR": addrs[rank],
                "PRIMARY_ADDR": addrs[0], "MASTER_ADDR": addrs[0], "PRIMARY_PORT": self.primary_port,
                "MASTER_PORT": self.primary_port, "HOST_NODE_ADDR": f"{addrs[0]}:{self.primary_port}",
                "NUM_TRAINERS": str(per), "WORLD_SIZE": str(n * per),
            })  # fmt: skip
            self.pods[pod_id]["_cluster"] = cid
            pods.append(pod_id)
        self.clusters[cid] = {"id": cid, "name": body["name"], "type": body["type"], "compute": dict(comp),
                              "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "_pods": pods,
                              "_body": body}  # fmt: skip
        return Reply(201, self._cluster(self.clusters[cid], refresh=False))

    def _status(self, pod: dict) -> str:
        if pod.get("_failed"):
            return "ERROR"
        if pod["_stopped"]:
            return "EXITED"
        if not pod["_started"]:
            return "PROVISIONING"
        return "RUNNING" if pod.get("runtime") else "STARTING"

    def _cluster(self, c: dict, refresh: bool = True) -> dict:
        by: dict[str, int] = {}
        live = [self.pods[p] for p in c["_pods"] if p in self.pods]
        for pod in live:
            if refresh:  # a read advances the nodes as RunPod would; the create's own answer does not
                self._refresh(pod)
            s = self._status(pod)
            by[s] = by.get(s, 0) + 1
        out = {k: v for k, v in c.items() if not k.startswith("_")}
        out["pods"] = {"total": len(live), "byStatus": by}
        out["network"] = {"cidr": "10.65.0.0/16"}
        if c["_pods"][0] in self.pods:
            out["primary"] = {"podId": c["_pods"][0], "status": self._status(self.pods[c["_pods"][0]])}
        return out

    def _v2_pod(self, pod_id: str) -> dict:
        pod = self.pods[pod_id]
        status = self._status(pod)
        actions = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
                   "ERROR": ["start", "terminate"]}.get(status, ["stop", "terminate"])  # fmt: skip
        return {
            "id": pod_id,
            "name": pod["name"],
            "status": status,
            "actions": actions,
            "image": pod["imageName"],
        }

    def _pod_action(self, pod_id: str, body: Any) -> Reply:
        pod = self.pods.get(pod_id)
        if pod is None:
            return _problem(404, "Not Found", "pod not found")
        action = body.get("action") if isinstance(body, dict) else None
        if action not in ("start", "stop", "restart", "terminate"):
            return _problem(400, "Bad Request", "action must be one of start, stop, restart, terminate")
        if action not in self._v2_pod(pod_id)["actions"]:
            return _problem(
                409, "Conflict", f"action {action} is not valid for a pod in status {self._status(pod)}"
            )
        if action == "terminate":
            self._terminate(pod_id)
            return Reply(204, "", "text/plain")
        self._stop_resume("podStop" if action == "stop" else "podResume", pod_id)
        return Reply(200, self._v2_pod(pod_id))
