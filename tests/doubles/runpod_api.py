"""A local double of the RunPod GraphQL API (+ the REST v2 log stream), following ../shared/docs/clouds.md.

It recognises operations by their root field (``gpuTypes``, ``podFindAndDeployOnDemand``, ``podRentInterruptable``,
``pod``, ``podTerminate``, ``podStop``, ``podResume``) and insists on **variables**: a query text that carries a
string literal is answered with a GraphQL error, as interpolating values is how the SDK breaks on quotes.
Errors come in HTTP 200 with ``errors``; ``runtime`` is null until the container is "up"; terminating an
unknown pod → "pod not found". Scripting: ``fail_next``, ``no_capacity``, ``preempt``, ``exit``, ``set_logs``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from tests.doubles.common import ApiDouble, Reply

NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."
_ROOTS = (
    "podFindAndDeployOnDemand",
    "podRentInterruptable",
    "podTerminate",
    "podStop",
    "podResume",
    "gpuTypes",
    "pod",
)


def make_gpu_type(
    gpu_id: str, price: float, spot: float | None = None, memory_gb: int = 48, stock: str | None = "High"
) -> dict[str, Any]:
    return {
        "id": gpu_id,
        "displayName": gpu_id.replace("NVIDIA ", ""),
        "memoryInGb": memory_gb,
        "securePrice": round(price * 1.2, 3),
        "communityPrice": price,
        "secureSpotPrice": round((spot or price / 2) * 1.2, 3),
        "communitySpotPrice": spot or round(price / 2, 3),
        "_stock": stock,
    }


def _gql_error(message: str, code: str = "BAD_USER_INPUT") -> Reply:
    return Reply(200, {"errors": [{"message": message, "extensions": {"code": code}}], "data": None})


class RunpodDouble(ApiDouble):
    def __init__(
        self, api_key: str = "runpod-test-key", gpu_types: list[dict] | None = None, start_polls: int = 2
    ):
        super().__init__(api_key)
        self.gpu_types: dict[str, dict] = {g["id"]: dict(g) for g in (gpu_types or [])}
        self.pods: dict[str, dict] = {}
        self.terminated: list[str] = []
        self.start_polls = start_polls
        self._ids = itertools.count(1)
        self._logs: dict[str, list[str]] = {}

    # -- scripting ---------------------------------------------------------------------------------------
    def no_capacity(self, gpu_id: str) -> None:
        with self.lock:
            self.gpu_types[gpu_id]["_stock"] = None

    def preempt(self, pod_id: str) -> None:
        """A spot pod outbid: it goes EXITED and loses its runtime."""
        with self.lock:
            self.pods[pod_id].update(desiredStatus="EXITED", runtime=None, _pinned=True)

    def exit(self, pod_id: str) -> None:
        self.preempt(pod_id)

    def set_logs(self, pod_id: str, lines: list[str]) -> None:
        with self.lock:
            self._logs[pod_id] = list(lines)

    def live_pods(self) -> list[str]:
        with self.lock:
            return sorted(self.pods)

    def operations(self) -> list[tuple[str, dict]]:
        """(root field, variables) of every GraphQL request so far."""
        out = []
        for r in self.calls("POST", r"/graphql"):
            if isinstance(r.body, dict):
                out.append((_root(r.body.get("query", "")), r.body.get("variables") or {}))
        return out

    # -- API ---------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        if not self.authorized(headers):
            return Reply(401, "401 Unauthorized", "text/plain")
        m = re.fullmatch(r"/v2/pods/([^/]+)/logs", path)
        if method == "GET" and m:
            return self._sse_logs(m.group(1), int((query.get("tail") or ["100"])[0]))
        if method != "POST" or path != "/graphql":
            return Reply(404, "<html><body>404 page not found</body></html>", "text/html")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return Reply(400, {"errors": [{"message": "Must provide query string."}]})
        q, variables = body["query"], body.get("variables") or {}
        if re.search(r'"', q):
            return _gql_error(
                "string literal in query text: pass values as variables", "GRAPHQL_VALIDATION_FAILED"
            )
        root = _root(q)
        with self.lock:
            if root == "gpuTypes":
                return self._gpu_types(variables)
            if root in ("podFindAndDeployOnDemand", "podRentInterruptable"):
                return self._deploy(root, variables)
            if root == "pod":
                return self._pod(variables)
            if root == "podTerminate":
                return self._terminate(variables)
            if root in ("podStop", "podResume"):
                return self._stop_resume(root, variables)
        return _gql_error(f"Cannot query field {root!r}", "GRAPHQL_VALIDATION_FAILED")

    def _input(self, variables: dict) -> dict:
        inp = variables.get("input")
        if not isinstance(inp, dict):
            raise ValueError("variables.input missing")
        return inp

    def _gpu_types(self, v: dict) -> Reply:
        wanted = (v.get("input") or {}).get("id")
        count = int((v.get("lowestPriceInput") or {}).get("gpuCount") or 1)
        out = []
        for g in self.gpu_types.values():
            if wanted and g["id"] != wanted:
                continue
            pub = {k: val for k, val in g.items() if not k.startswith("_")}
            pub["lowestPrice"] = {
                "minimumBidPrice": g["communitySpotPrice"] if g["_stock"] else None,
                "uninterruptablePrice": g["communityPrice"] if g["_stock"] else None,
                "stockStatus": g["_stock"],
            }
            pub["_count"] = count
            out.append({k: val for k, val in pub.items() if k != "_count"})
        return Reply(200, {"data": {"gpuTypes": out}})

    def _deploy(self, root: str, v: dict) -> Reply:
        inp = self._input(v)
        for key in ("imageName", "gpuTypeId", "gpuCount"):
            if key not in inp:
                return _gql_error(f'Field "{key}" of required type was not provided.')
        g = self.gpu_types.get(inp["gpuTypeId"])
        if g is None or not g["_stock"]:
            return _gql_error(NO_CAPACITY, "INTERNAL_SERVER_ERROR")
        if root == "podRentInterruptable":
            bid = inp.get("bidPerGpu")
            if bid is None or float(bid) < g["communitySpotPrice"]:
                return _gql_error(f"Your bid price is below the minimum bid of {g['communitySpotPrice']}.")
        env = inp.get("env") or []
        if not all(isinstance(e, dict) and set(e) == {"key", "value"} for e in env):
            return _gql_error("env must be a list of {key, value}")
        pod_id = f"pod{next(self._ids):04d}x"
        self.pods[pod_id] = {
            "id": pod_id,
            "name": inp.get("name"),
            "imageName": inp["imageName"],
            "machineId": f"m-{pod_id}",
            "desiredStatus": "RUNNING",
            "lastStatusChange": "Rented by User",
            "costPerHr": (
                float(inp.get("bidPerGpu")) if root == "podRentInterruptable" else g["communityPrice"]
            )
            * int(inp["gpuCount"]),
            "runtime": None,
            "interruptible": root == "podRentInterruptable",
            "_polls": 0,
            "_pinned": False,
            "_input": inp,
        }
        return Reply(
            200, {"data": {root: {"id": pod_id, "imageName": inp["imageName"], "machineId": f"m-{pod_id}"}}}
        )

    def _pod(self, v: dict) -> Reply:
        pod_id = self._input(v).get("podId")
        pod = self.pods.get(pod_id)
        if pod is None:
            return Reply(200, {"data": {"pod": None}})
        if not pod["_pinned"]:
            pod["_polls"] += 1
            if pod["_polls"] > self.start_polls:
                pod["runtime"] = {"uptimeInSeconds": pod["_polls"], "ports": [], "gpus": []}
        return Reply(200, {"data": {"pod": {k: val for k, val in pod.items() if not k.startswith("_")}}})

    def _terminate(self, v: dict) -> Reply:
        pod_id = self._input(v).get("podId")
        if self.pods.pop(pod_id, None) is None:
            return _gql_error("pod not found", "NOT_FOUND")
        self.terminated.append(pod_id)
        return Reply(200, {"data": {"podTerminate": None}})

    def _stop_resume(self, root: str, v: dict) -> Reply:
        pod_id = self._input(v).get("podId")
        pod = self.pods.get(pod_id)
        if pod is None:
            return _gql_error("pod not found", "NOT_FOUND")
        pod.update(
            desiredStatus="EXITED" if root == "podStop" else "RUNNING",
            runtime=None,
            _pinned=root == "podStop",
        )
        return Reply(200, {"data": {root: {"id": pod_id, "desiredStatus": pod["desiredStatus"]}}})

    def _sse_logs(self, pod_id: str, tail: int) -> Reply:
        if pod_id not in self.pods:
            return Reply(404, {"error": "pod not found"})
        lines = self._logs.get(pod_id, [])[-tail:]
        events = "".join(
            f"data: {json.dumps({'source': 'container', 'line': line, 'ts': f'2026-01-01T00:00:{i:02d}Z'})}\n\n"
            for i, line in enumerate(lines)
        )
        return Reply(200, events, "text/event-stream")


def _root(query: str) -> str:
    """The first selected root field of a GraphQL operation (after ``query|mutation Name(...) {``)."""
    q = re.sub(r"#.*", "", query)
    brace = q.find("{")
    m = re.match(r"\s*([A-Za-z_]\w*)", q[brace + 1 :]) if brace >= 0 else None
    name = m.group(1) if m else ""
    return name if name in _ROOTS else name
