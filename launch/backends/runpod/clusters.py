"""RunPod Instant Clusters as one ``Compute`` instance: N identical pods created, watched and deleted together
through the REST v2 API (github:runpod/docs ``api-reference-v2/openapi.json``: ``POST /v2/clusters``,
``GET /v2/clusters[/{id}[/pods]]``, ``DELETE /v2/clusters/{id}``, ``POST /v2/pods/{id}/action``;
``instant-clusters/configuration.mdx`` for what each node is given).

Why one instance for the group: a multi-node run lives or dies as a whole (torchrun's static rendezvous cannot
replace one node), so the controller's instance is the cluster: a lost node makes it STOPPED and the controller
relaunches the whole group, which resumes from the last committed checkpoint.

- create: ``{name, type: TRAINING, compute: {gpuTypeId, gpuCountPerPod, podCount}, image, env, disk}``, sent
  once; clusters take no private-registry credential (documented) and have no spot: both refused up front.
- price: the GPU type's on-demand price × GPUs per pod × nodes (``Offer.price_per_hour`` is the whole group's,
  so ``--max_cost`` and the spend count every node).
- state from ``pods.byStatus`` (PodStatus: PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED): every
  node RUNNING → RUNNING; any ERROR → FAILED; any EXITED/TERMINATED or a node missing after all ran → STOPPED;
  otherwise PROVISIONING; 404 → GONE.
- stop: ``{"action": "stop"}`` on every member pod (the cluster has no stop of its own); logs: the primary's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from launch.backends.base import (
    CloudError,
    Instance,
    InstanceState,
    InstanceStatus,
    LaunchRequest,
    NoCapacity,
    Offer,
    OfferQuery,
    RequestRejected,
)
from launch.backends.runpod.compute import NO_CAPACITY_MARKERS, RunpodCompute, in_stock
from launch.backends.transport import error_message

CLUSTER_TYPE = "TRAINING"
MIN_NODES, MAX_NODES = 2, 250  # ClusterCompute.podCount (self-serve: 2-8, instant-clusters.mdx)


class RunpodClusterCompute(RunpodCompute):
    """``nodes`` identical pods per instance; everything else (key, URLs, GPU prices, logs) as ``RunpodCompute``."""

    name = "runpod-cluster"  # recorded with each launch: status / logs / cancel find this compute again

    def __init__(self, nodes: int = MIN_NODES, **kw: Any):
        if not MIN_NODES <= nodes <= MAX_NODES:
            raise RequestRejected(f"runpod: an Instant Cluster has {MIN_NODES}-{MAX_NODES} nodes (asked: {nodes})",
                                  cloud="runpod", call="clusters")  # fmt: skip
        super().__init__(**kw)
        self.nodes = nodes

    # -- REST v2 ---------------------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.api.v2_base}{path}"

    def _check(self, call: str, status: int, body: Any) -> None:
        if not 200 <= status < 300:
            raise CloudError(f"runpod: {call} → HTTP {status}: {error_message(body)}", cloud="runpod", call=call,
                             status=status, body=body)  # fmt: skip

    def cluster(self, cluster_id: str) -> dict[str, Any] | None:
        a = self.api.http.call(f"cluster {cluster_id}", "GET", self._url(f"/clusters/{cluster_id}"))
        if a.status == 404:
            return None
        self._check(f"cluster {cluster_id}", a.status, a.body)
        return dict(a.body)

    def cluster_pods(self, cluster_id: str) -> list[dict[str, Any]]:
        a = self.api.http.call(f"cluster {cluster_id} pods", "GET", self._url(f"/clusters/{cluster_id}/pods"))
        self._check(f"cluster {cluster_id} pods", a.status, a.body)
        return list(a.body.get("pods") or [])

    # -- Compute ---------------------------------------------------------------------------------------------
    def offers(self, query: OfferQuery) -> list[Offer]:
        if query.interruptible:
            raise RequestRejected("runpod: Instant Clusters are on-demand only (no interruptible nodes); drop "
                                  "--interruptible", cloud="runpod", call="clusters")  # fmt: skip
        out = []
        n = query.num_gpus
        for gpu_id in query.profile.runpod_ids:
            for g in self.api.gpu_types(gpu_id, self.lowest_price_input(query)):
                lp = g.get("lowestPrice") or {}
                per_gpu = lp.get("uninterruptablePrice")
                if per_gpu is None or not in_stock(lp):
                    continue
                price = round(float(per_gpu) * n * self.nodes, 4)
                if query.max_price is not None and price > query.max_price:
                    continue
                out.append(Offer(backend=self.name, offer_id=str(g["id"]), gpu_name=str(g.get("displayName") or g["id"]),
                                 num_gpus=n, price_per_hour=price,
                                 extra={"nodes": self.nodes, "per_node_per_hour": round(float(per_gpu) * n, 4),
                                        "stockStatus": lp.get("stockStatus")}))  # fmt: skip
        out.sort(key=lambda o: o.price_per_hour)
        return out

    def cluster_request(self, req: LaunchRequest, offer: Offer) -> dict[str, Any]:
        """The ``CreateClusterRequest`` body (the same env on every node; RunPod adds each node's own)."""
        return {
            "name": req.name,
            "type": CLUSTER_TYPE,
            "compute": {
                "gpuTypeId": offer.offer_id,
                "gpuCountPerPod": max(req.gpu_count, 1),
                "podCount": self.nodes,
            },
            "image": req.image,
            "env": dict(req.env),
            "disk": req.disk_gb,
        }

    def create(self, request: LaunchRequest, offer: Offer | None) -> Instance:
        if offer is None:
            raise RequestRejected("runpod: create needs an offer", cloud="runpod", call="createCluster")
        if request.registry_auth is not None:
            raise RequestRejected("runpod: Instant Clusters cannot pull from a private registry (the API takes no "
                                  "registry credential for clusters); push the image to a public one",
                                  cloud="runpod", call="createCluster")  # fmt: skip
        a = self.api.http.create("createCluster", "POST", self._url("/clusters"),
                                 json=self.cluster_request(request, offer))  # fmt: skip
        if a.ok and isinstance(a.body, dict) and a.body.get("id"):
            return Instance(self.name, str(a.body["id"]), offer)
        text = error_message(a.body)
        kw = {"cloud": "runpod", "call": "createCluster", "status": a.status, "body": a.body}
        if any(m in text.lower() for m in NO_CAPACITY_MARKERS):
            raise NoCapacity(f"runpod: createCluster: {text}", **kw)
        if a.status in (400, 422):
            raise RequestRejected(f"runpod: createCluster → HTTP {a.status}: {text}", **kw)
        raise CloudError(f"runpod: createCluster → HTTP {a.status}: {text}", **kw)

    def status(self, instance_id: str) -> InstanceStatus:
        c = self.cluster(instance_id)
        if c is None:
            return InstanceStatus(InstanceState.GONE, "no such cluster")
        want = int((c.get("compute") or {}).get("podCount") or self.nodes)
        by = {str(k): int(v) for k, v in ((c.get("pods") or {}).get("byStatus") or {}).items()}
        total = int((c.get("pods") or {}).get("total") or 0)
        detail = f"{total}/{want} pods: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items()))
        if by.get("ERROR"):
            return InstanceStatus(InstanceState.FAILED, detail)
        if by.get("EXITED") or by.get("TERMINATED"):
            return InstanceStatus(InstanceState.STOPPED, detail)
        if by.get("RUNNING", 0) == want == total:
            return InstanceStatus(InstanceState.RUNNING, detail)
        return InstanceStatus(InstanceState.PROVISIONING, detail)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        """The primary node's container log (node 0: where merge, eval and the report come from)."""
        c = self.cluster(instance_id) or {}
        primary = (c.get("primary") or {}).get("podId")
        if not primary:
            return iter(())
        return super().logs(str(primary), follow=follow, tail=tail)

    def stop(self, instance_id: str) -> None:
        for pod in self.cluster_pods(instance_id):
            if "stop" in (pod.get("actions") or ["stop"]):
                a = self.api.http.call(f"pod {pod['id']} stop", "POST", self._url(f"/pods/{pod['id']}/action"),
                                       json={"action": "stop"})  # fmt: skip
                if a.status != 409:  # 409: not valid in its state now (already stopping)
                    self._check(f"pod {pod['id']} stop", a.status, a.body)

    def destroy(self, instance_id: str) -> None:
        a = self.api.http.call(f"deleteCluster {instance_id}", "DELETE", self._url(f"/clusters/{instance_id}"),
                               allow_empty=True)  # fmt: skip
        if a.status == 404:
            return  # already gone = done
        self._check(f"deleteCluster {instance_id}", a.status, a.body)

    def find(self, name: str) -> list[str]:
        a = self.api.http.call("listClusters", "GET", self._url("/clusters"))
        self._check("listClusters", a.status, a.body)
        return [str(c["id"]) for c in a.body.get("clusters") or [] if c.get("name") == name]
