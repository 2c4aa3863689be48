"""A local double of RunPod's APIs, rebuilt from its official references (github:runpod/docs:
``sdks/graphql/manage-pods.mdx``, ``api-reference/openapi.json`` (REST v1), ``api-reference-v2/openapi.json``
(pod logs), ``pods/manage-pods.mdx``, ``pods/templates/environment-variables.mdx``), runpodctl
(``internal/api/graphql.go``) and dstack's ``core/backends/runpod/api_client.py``.

What it reproduces:
- GraphQL ``POST /graphql``: roots ``gpuTypes``, ``podFindAndDeployOnDemand``, ``podRentInterruptable``, ``pod``,
  ``myself`` (``pods``, ``containerRegistryCreds``), ``podStop``, ``podResume``, ``podTerminate``,
  ``saveRegistryAuth``; errors in HTTP 200 as ``{"errors": [{"message", "extensions": {"code"}}]}``; no capacity
  → "There are no longer any instances available…"; terminating an unknown pod → "pod not found to terminate";
  a query text carrying a string literal is refused (values must travel as variables); bad key → 401.
- ``lowestPrice.stockStatus`` High/Medium/Low or the string "None" (sold out); host minimums
  (``minMemoryInGb``, ``minVcpuCount``, ``minCudaVersion``, ``allowedCudaVersions``: exact ``major.minor``) are
  checked against the GPU type's hosts.
- pods: ``desiredStatus`` RUNNING with ``runtime: null`` until the container is up; when the container exits
  RunPod starts it again and ``desiredStatus`` stays RUNNING; stopped → EXITED; an interruptible pod reclaimed
  by its host → EXITED (``preempt``); terminated pods disappear (``pod: null``).
- the pod's container gets the create's env plus what RunPod injects: ``RUNPOD_POD_ID``, a pod-scoped
  ``RUNPOD_API_KEY`` (accepted only by REST ``POST /v1/pods/{id}/stop`` of that pod), and the API base URLs
  pointing at this double: ``RUNPOD_API_URL`` (GraphQL) and ``RUNPOD_REST_URL`` (REST v1, ending in ``/v1``).
- REST v1 ``POST /v1/pods/{id}/stop``, ``DELETE /v1/pods/{id}``.
- REST v2 ``GET /v2/pods/{id}/logs``: server-sent events ``id: <ts>/<seq>`` + ``data: {ts, source, line}``,
  kept open while the pod lives (new lines are sent as they appear); ``source`` omitted → system lines mixed
  in; ``tail`` ≤ 5000 (default 100); ``Last-Event-ID`` resumes after that event.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from tests.doubles.common import ApiDouble, Host, HostError, Reply, SimulatedHost, bearer

NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."
_ROOTS = (
    "podFindAndDeployOnDemand",
    "podRentInterruptable",
    "podTerminate",
    "podStop",
    "podResume",
    "saveRegistryAuth",
    "gpuTypes",
    "myself",
    "pod",
)


def make_gpu_type(
    gpu_id: str,
    price: float,
    spot: float | None = None,
    memory_gb: int = 48,
    stock: str | None = "High",
    *,
    host_ram_gb: int = 256,
    host_vcpus: int = 32,
    host_cuda: str = "12.8",
) -> dict[str, Any]:
    """A GPU type as ``gpuTypes`` answers it, plus the best host behind it (``_host_*``, never shown)."""
    return {
        "id": gpu_id,
        "displayName": gpu_id.replace("NVIDIA ", ""),
        "memoryInGb": memory_gb,
        "securePrice": round(price * 1.2, 3),
        "communityPrice": price,
        "secureSpotPrice": round((spot or price / 2) * 1.2, 3),
        "communitySpotPrice": spot or round(price / 2, 3),
        "_stock": stock,
        "_host_ram_gb": host_ram_gb,
        "_host_vcpus": host_vcpus,
        "_host_cuda": host_cuda,
    }


def _gql_error(message: str, code: str = "BAD_USER_INPUT") -> Reply:
    return Reply(200, {"errors": [{"message": message, "extensions": {"code": code}}], "data": None})


def _problem(status: int, title: str, detail: str) -> Reply:
    return Reply(status, {"title": title, "status": status, "detail": detail}, "application/problem+json")


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


class RunpodDouble(ApiDouble):
    def __init__(
        self,
        api_key: str = "runpod-test-key",
        gpu_types: list[dict] | None = None,
        start_polls: int = 2,
        host: Host | None = None,
    ):
        super().__init__(api_key)
        self.host: Host = host if host is not None else SimulatedHost()
        self.gpu_types: dict[str, dict] = {g["id"]: dict(g) for g in (gpu_types or [])}
        self.pods: dict[str, dict] = {}
        self.terminated: list[str] = []
        self.registry_auths: dict[str, dict] = {}  # name -> {id, name, username, password}
        self.start_polls = start_polls  # pod polls with runtime null before the container starts
        self.sse_hold_s = 2.0  # how long a log stream stays open without the pod ending
        self._ids = itertools.count(1)

    # -- scripting -------------------------------------------------------------------------------------------
    def no_capacity(self, gpu_id: str) -> None:
        with self.lock:
            self.gpu_types[gpu_id]["_stock"] = "None"

    def preempt(self, pod_id: str) -> None:
        """The host reclaims an interruptible pod: container killed, pod stopped (EXITED, no runtime)."""
        with self.lock:
            self.host.kill(pod_id)
            self.pods[pod_id].update(desiredStatus="EXITED", runtime=None, _stopped=True,
                                     lastStatusChange="Stopped by host: interruptible pod reclaimed")  # fmt: skip

    def pod_key(self, pod_id: str) -> str:
        return self.pods[pod_id]["_pod_key"]

    def live_pods(self) -> list[str]:
        with self.lock:
            return sorted(self.pods)

    def operations(self) -> list[tuple[str, dict]]:
        """(root field, variables) of every GraphQL request so far."""
        return [(_root(r.body.get("query", "")), r.body.get("variables") or {})
                for r in self.calls("POST", r"/graphql") if isinstance(r.body, dict)]  # fmt: skip

    # -- API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        token = bearer(headers)
        m = re.fullmatch(r"/v1/pods/([^/]+)(/stop)?", path)
        if m:
            return self._rest_v1(method, m.group(1), bool(m.group(2)), token)
        if token != self.api_key:
            return Reply(401, "401 Unauthorized", "text/plain")
        m = re.fullmatch(r"/v2/pods/([^/]+)/logs", path)
        if method == "GET" and m:
            return self._sse_logs(m.group(1), query, headers)
        if method != "POST" or path != "/graphql":
            return Reply(404, "<html><body>404 page not found</body></html>", "text/html")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return Reply(400, {"errors": [{"message": "Must provide query string."}]})
        q, variables = body["query"], body.get("variables") or {}
        if '"' in q:
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
            if root == "myself":
                return self._myself()
            if root == "podTerminate":
                return self._terminate(variables["input"]["podId"])
            if root in ("podStop", "podResume"):
                return self._stop_resume(root, variables["input"]["podId"])
            if root == "saveRegistryAuth":
                return self._save_registry_auth(variables["input"])
        return _gql_error(f"Cannot query field {root!r} on type Query", "GRAPHQL_VALIDATION_FAILED")

    def _rest_v1(self, method: str, pod_id: str, stop: bool, token: str | None) -> Reply:
        with self.lock:
            pod = self.pods.get(pod_id)
            own_key = pod is not None and token == pod["_pod_key"]
            if token != self.api_key and not (own_key and stop and method == "POST"):
                return Reply(401, {"error": "unauthorized"})
            if pod is None:
                return Reply(400 if stop else 404, {"error": "Invalid Pod ID."})
            if stop and method == "POST":
                self._stop_resume("podStop", pod_id)
                return Reply(200, {"id": pod_id, "desiredStatus": "EXITED"})
            if not stop and method == "DELETE":
                self._terminate(pod_id)
                return Reply(200, {})
        return Reply(405, {"error": "method not allowed"})

    def _gpu_types(self, v: dict) -> Reply:
        wanted = (v.get("input") or {}).get("id")
        lp_in = v.get("lowestPriceInput") or {}
        out = []
        for g in self.gpu_types.values():
            if wanted and g["id"] != wanted:
                continue
            fits = self._host_fits(g, lp_in)
            stock = g["_stock"] if fits else "None"
            sold_out = stock in (None, "None")
            pub = {k: val for k, val in g.items() if not k.startswith("_")}
            pub["lowestPrice"] = {
                "minimumBidPrice": None if sold_out else g["communitySpotPrice"],
                "uninterruptablePrice": None if sold_out else g["communityPrice"],
                "stockStatus": stock,
            }
            out.append(pub)
        return Reply(200, {"data": {"gpuTypes": out}})

    @staticmethod
    def _host_fits(g: dict, inp: dict) -> bool:
        if int(inp.get("minMemoryInGb") or 0) > g["_host_ram_gb"]:
            return False
        if int(inp.get("minVcpuCount") or 0) > g["_host_vcpus"]:
            return False
        cuda = inp.get("minCudaVersion")
        if cuda and _version(g["_host_cuda"]) < _version(cuda):
            return False
        # allowedCudaVersions (sdks/graphql/manage-pods.mdx; api-reference-v2 CreateGpuConfig): the host's CUDA
        # must be one of them, matched exactly ("12.8"); omitted or [] accepts any host
        allowed = inp.get("allowedCudaVersions") or []
        return not allowed or g["_host_cuda"] in allowed

    def _deploy(self, root: str, v: dict) -> Reply:
        inp = v.get("input")
        if not isinstance(inp, dict):
            return _gql_error('Variable "$input" of required type was not provided.')
        for key in ("imageName", "gpuTypeId", "gpuCount"):
            if key not in inp:
                return _gql_error(f'Field "{key}" of required type was not provided.')
        env = inp.get("env") or []
        if not all(isinstance(e, dict) and set(e) == {"key", "value"} for e in env):
            return _gql_error("env must be a list of {key, value}")
        auth_id = inp.get("containerRegistryAuthId")
        auth = next((a for a in self.registry_auths.values() if a["id"] == auth_id), None)
        if auth_id and auth is None:
            return _gql_error(f"container registry auth {auth_id} not found")
        g = self.gpu_types.get(inp["gpuTypeId"])
        if g is None or g["_stock"] in (None, "None") or not self._host_fits(g, inp):
            return _gql_error(NO_CAPACITY, "INTERNAL_SERVER_ERROR")
        if root == "podRentInterruptable":
            bid = inp.get("bidPerGpu")
            if bid is None or float(bid) < g["communitySpotPrice"]:
                return _gql_error(f"Your bid price is below the minimum bid of {g['communitySpotPrice']}.")
        pod_id = f"{secrets.token_hex(5)}{next(self._ids):04d}"
        price = float(inp["bidPerGpu"]) if root == "podRentInterruptable" else g["communityPrice"]
        self.pods[pod_id] = {
            "id": pod_id, "name": inp.get("name"), "imageName": inp["imageName"], "machineId": f"m{pod_id[:8]}",
            "desiredStatus": "RUNNING", "lastStatusChange": "Rented by User", "costPerHr": price * int(inp["gpuCount"]),
            "gpuCount": int(inp["gpuCount"]), "runtime": None, "interruptible": root == "podRentInterruptable",
            "_polls": 0, "_started": False, "_stopped": False, "_input": inp, "_pod_key": secrets.token_hex(16),
            "_env": {e["key"]: e["value"] for e in env}, "_auth": auth, "_system": ["create container"],
            "_t0": time.time(),
        }  # fmt: skip
        if self.start_polls <= 0:
            self._start(self.pods[pod_id])
        p = self.pods[pod_id]
        return Reply(200, {"data": {root: {"id": pod_id, "name": p["name"], "imageName": p["imageName"],
                                           "machineId": p["machineId"], "desiredStatus": "RUNNING"}}})  # fmt: skip

    def _start(self, pod: dict) -> None:
        env = dict(pod["_env"])
        env.update(RUNPOD_POD_ID=pod["id"], RUNPOD_API_KEY=pod["_pod_key"], RUNPOD_API_URL=f"{self.url}/graphql",
                   RUNPOD_REST_URL=f"{self.url}/v1")  # fmt: skip
        auth = pod["_auth"]
        registry = pod["imageName"].split("/", 1)[0] if "/" in pod["imageName"] else "docker.io"
        creds = (registry, auth["username"], auth["password"]) if auth else None
        pod["_started"] = True
        pod["_system"].append(f"pulling image {pod['imageName']}")
        try:
            self.host.start(pod["id"], pod["imageName"], env, creds)
            pod["_system"].append("start container")
        except HostError as e:  # RunPod keeps trying; the pod never gets a runtime
            pod.update(_failed=str(e), lastStatusChange=f"error creating container: {e}")
            pod["_system"].append(f"error creating container: {e}")

    def _public(self, pod: dict) -> dict:
        return {k: val for k, val in pod.items() if not k.startswith("_")}

    def _refresh(self, pod: dict) -> None:
        """Advance a pod the way RunPod does: start after a few polls; restart an exited container."""
        if pod["_stopped"] or pod.get("_failed"):
            return
        if not pod["_started"]:
            pod["_polls"] += 1
            if pod["_polls"] > self.start_polls:
                self._start(pod)
            if not pod["_started"] or pod.get("_failed"):
                return
        st = self.host.state(pod["id"])
        if st == "exited":
            pod["_system"].append(f"container exited with code {self.host.exit_code(pod['id'])}; restarting")
            self.host.restart(pod["id"])  # desiredStatus stays RUNNING
            pod["_t0"] = time.time()
            st = self.host.state(pod["id"])
        if st == "running":
            pod["runtime"] = {"uptimeInSeconds": int(time.time() - pod["_t0"]), "ports": [], "gpus": []}
        else:
            pod["runtime"] = None

    def _pod(self, v: dict) -> Reply:
        pod = self.pods.get((v.get("input") or {}).get("podId"))
        if pod is None:
            return Reply(200, {"data": {"pod": None}})
        self._refresh(pod)
        return Reply(200, {"data": {"pod": self._public(pod)}})

    def _myself(self) -> Reply:
        pods = [self._public(p) for p in self.pods.values()]
        creds = [{"id": a["id"], "name": a["name"]} for a in self.registry_auths.values()]
        return Reply(200, {"data": {"myself": {"pods": pods, "containerRegistryCreds": creds}}})

    def _terminate(self, pod_id: str) -> Reply:
        pod = self.pods.pop(pod_id, None)
        if pod is None:
            return _gql_error("pod not found to terminate", "NOT_FOUND")
        self.host.kill(pod_id)
        self.host.remove(pod_id)
        self.terminated.append(pod_id)
        return Reply(200, {"data": {"podTerminate": None}})

    def _stop_resume(self, root: str, pod_id: str) -> Reply:
        pod = self.pods.get(pod_id)
        if pod is None:
            return _gql_error("pod not found", "NOT_FOUND")
        if root == "podStop":
            self.host.stop(pod_id)
            pod.update(
                desiredStatus="EXITED", runtime=None, _stopped=True, lastStatusChange="Stopped by user"
            )
        else:
            if self.host.state(pod_id) == "exited":
                self.host.restart(pod_id)
            pod.update(desiredStatus="RUNNING", _stopped=False)
        return Reply(200, {"data": {root: {"id": pod_id, "desiredStatus": pod["desiredStatus"]}}})

    def _save_registry_auth(self, inp: dict) -> Reply:
        name = inp.get("name")
        if not name or not inp.get("username") or not inp.get("password"):
            return _gql_error("name, username and password are required")
        if name in self.registry_auths:
            return _gql_error(f"Registry auth with name {name} already exists")
        auth = {"id": f"cra{len(self.registry_auths) + 1:05d}", "name": name, "username": inp["username"],
                "password": inp["password"]}  # fmt: skip
        self.registry_auths[name] = auth
        return Reply(200, {"data": {"saveRegistryAuth": {"id": auth["id"], "name": name}}})

    # -- v2 logs (server-sent events) ------------------------------------------------------------------------
    def _log_lines(self, pod: dict, source: str | None) -> list[tuple[str, str]]:
        out = []
        if source in (None, "system"):
            out += [("system", s) for s in pod["_system"]]
        if source in (None, "container"):
            out += [("container", s) for s in self.host.logs(pod["id"]).splitlines()]
        return out

    def _sse_logs(self, pod_id: str, query: dict, headers: dict[str, str]) -> Reply:
        source = (query.get("source") or [None])[0]
        tail = int((query.get("tail") or ["100"])[0])
        if source not in (None, "container", "system"):
            return _problem(400, "Bad Request", f"invalid source {source!r}")
        if not 0 <= tail <= 5000:
            return _problem(400, "Bad Request", "tail must be between 0 and 5000")
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None:
                return _problem(404, "Not Found", "pod not found")
            lines = self._log_lines(pod, source)
        last = {k.lower(): v for k, v in headers.items()}.get("last-event-id")
        start = int(last.rsplit("/", 1)[-1]) if last else max(0, len(lines) - tail)

        def events() -> Iterator[bytes]:
            sent = start
            end = time.monotonic() + self.sse_hold_s
            while True:
                with self.lock:
                    pod = self.pods.get(pod_id)
                    current = self._log_lines(pod, source) if pod else []
                    alive = pod is not None and not pod["_stopped"]
                for seq in range(sent, len(current)):
                    src, line = current[seq]
                    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    data = json.dumps({"ts": ts, "source": src, "line": line})
                    yield f"id: {ts}/{seq + 1:012d}\ndata: {data}\n\n".encode()
                sent = max(sent, len(current))
                if not alive or time.monotonic() > end:
                    return
                time.sleep(0.05)

        return Reply(
            200, content_type="text/event-stream", headers={"X-Accel-Buffering": "no"}, stream=events()
        )


def _root(query: str) -> str:
    """The first selected root field of a GraphQL operation (after ``query|mutation Name(...) {``)."""
    q = re.sub(r"#.*", "", query)
    brace = q.find("{")
    m = re.match(r"\s*([A-Za-z_]\w*)", q[brace + 1 :]) if brace >= 0 else None
    return m.group(1) if m else ""
