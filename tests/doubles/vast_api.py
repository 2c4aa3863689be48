"""A local double of the vast.ai REST API, rebuilt from its official reference (github:vast-ai/docs:
``api-reference/openapi/yaml/{search_offers,create_instance,show_instance,show_instances,manage_instance,
destroy_instance,logs}.yaml``, ``cli/reference/show-instance.mdx``, ``api-reference/hello-world.mdx``,
``guides/instances/docker-environment.mdx``) and how vast-cli calls it (github:vast-ai/vast-cli
``vastai/api/instances.py``, ``offers.py``).

What it reproduces (each from those files):
- search ``POST /api/v0/bundles/``: ``{field: {op: value}}`` with eq/neq/gt/gte/lt/lte/in/notin, ``order``,
  ``type`` (on-demand | ondemand | bid | reserved), ``limit``, ``allocated_storage``; unknown op → 400.
- create ``PUT /api/v0/asks/{id}/``: the ``x-input-validation`` limits (env value ≤ 256, env total ≤ 32768,
  image ≤ 1024, args + args_str + onstart ≤ 4096, label ≤ 256, disk ≥ 8) → 400 ``invalid_args``; price outside
  0.001..128 → 400 ``invalid_price``; offer gone → 404 "no_such_ask"; a bid under ``min_bid`` → 410 ``no_such_ask``
  with ``cancel_unavail: true``, else the instance is created *stopped* and the error still carries
  ``new_contract`` (the spot trap clouds.md and dstack describe). ``env`` as a dict (vast-cli) or as docker
  flags ``"-e K=V -p 8000:8000"`` (the reference). Success → ``{success, new_contract, instance_api_key}``.
- the instance's container gets the create's env plus what vast injects: ``CONTAINER_ID``,
  ``CONTAINER_API_KEY`` (accepted only to stop/start/destroy that one instance) and ``VAST_API_URL`` (this
  double, standing in for console.vast.ai).
- show ``GET /api/v0/instances/{id}/`` → ``{"instances": {...}}`` / ``{"instances": null}``: ``actual_status``
  null → loading → running, then what the host says (exited: "container process exited"; never an exit code);
  an image that cannot start → ``created`` + "OCI runtime create failed" in ``status_msg``.
- list ``GET /api/v1/instances/`` (limit ≤ 25, ``select_filters`` on label, ``next_token`` keyset pages).
- manage ``PUT /api/v0/instances/{id}/`` ``{"state"}``; destroy ``DELETE`` (404 ``not_found`` when gone).
- logs ``PUT /api/v0/instances/request_logs/{id}/`` → ``result_url``, a presigned-style URL on this server that
  404s until "uploaded" and refuses (400 InvalidArgument, as S3) any request carrying an Authorization header.
Scripting: ``fail_next`` (plain-text 429, HTML 5xx, lost answers), ``preempt``, ``set_state``, ``offer_gone``,
``refuse_destroy``; the ``host`` (``SimulatedHost`` by default) runs the containers.
"""

from __future__ import annotations

import itertools
import json
import secrets
import shlex
from typing import Any

from tests.doubles.common import ApiDouble, Host, HostError, Reply, SimulatedHost, bearer

_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
_SEARCH_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}
_TYPES = {"on-demand", "ondemand", "bid", "reserved"}
LIMITS = {"env_value": 256, "env_total": 32768, "image": 1024, "args": 4096, "label": 256, "disk_min": 8.0}
S3_AUTH_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code><Message>Only one auth '
    "mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the "
    "Authorization header should be specified</Message></Error>"
)
# A released Linux driver of each CUDA version (its cuda_max_good), for offers that do not name one.
DRIVER_OF_CUDA = {
    12.2: "535.104.05",
    12.4: "550.54.15",
    12.6: "560.35.03",
    12.8: "570.124.06",
    13.0: "580.82.07",
}
S3_NO_KEY = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>'


def make_offer(
    offer_id: int,
    gpu_name: str = "RTX A6000",
    num_gpus: int = 1,
    dph_total: float = 0.5,
    *,
    gpu_ram: int = 49140,
    min_bid: float | None = None,
    reliability: float = 0.99,
    verified: bool = True,
    disk_space: float = 500.0,
    machine_id: int | None = None,
    cuda_max_good: float = 12.8,
    cpu_ram: int = 128576,
    cpu_cores_effective: float = 16.0,
    driver_version: str | None = None,
) -> dict[str, Any]:
    """An offer with the fields of the search_offers.yaml example that the launcher reads or filters on.
    ``driver_version`` ("XXX.XX.XX", a string in the reference) defaults to a driver whose CUDA is
    ``cuda_max_good`` (the reference: "machine max supported cuda version (based on driver version)")."""
    if driver_version is None:
        driver_version = DRIVER_OF_CUDA.get(round(cuda_max_good, 1), "570.124.06")
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id + 900000,
        "machine_id": machine_id if machine_id is not None else offer_id + 50000,
        "host_id": offer_id + 70000,
        "num_gpus": num_gpus,
        "gpu_name": gpu_name,
        "gpu_ram": gpu_ram,
        "gpu_total_ram": gpu_ram * num_gpus,
        "dph_total": dph_total,
        "dph_base": round(dph_total * 0.9, 4),
        "min_bid": min_bid if min_bid is not None else round(dph_total * 0.4, 4),
        "is_bid": False,
        "reliability": reliability,
        "reliability2": reliability,
        "verified": verified,
        "verification": "verified" if verified else "unverified",
        "rentable": True,
        "rented": False,
        "disk_space": disk_space,
        "cuda_max_good": cuda_max_good,
        "driver_version": driver_version,
        "cpu_ram": cpu_ram,
        "cpu_cores": int(cpu_cores_effective * 2),
        "cpu_cores_effective": cpu_cores_effective,
        "inet_down": 800.0,
        "geolocation": "Atlantis, AT",
        "public_ipaddr": "203.0.113.42",
    }


def _err(status: int, error: str, msg: str, **extra: Any) -> Reply:
    return Reply(status, {"success": False, "error": error, "msg": msg, **extra})


def parse_env(env: Any) -> dict[str, str] | None:
    """``env`` as vast-cli sends it (dict; ``"-p 8000:8000": "1"`` entries are port maps) or as the reference
    documents it (a docker-flag string). None when it is neither."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items() if not str(k).startswith("-")}
    if isinstance(env, str):
        out, words = {}, shlex.split(env)
        for flag, val in zip(words[::2], words[1::2], strict=False):
            if flag == "-e" and "=" in val:
                k, v = val.split("=", 1)
                out[k] = v
        return out
    return None


class VastDouble(ApiDouble):
    def __init__(
        self,
        api_key: str = "vast-test-key",
        offers: list[dict] | None = None,
        start_polls: int = 2,
        host: Host | None = None,
    ):
        super().__init__(api_key)
        self.host: Host = host if host is not None else SimulatedHost()
        self.offers: dict[int, dict] = {o["id"]: dict(o) for o in (offers or [])}
        self.instances: dict[int, dict] = {}
        self.destroyed: list[int] = []
        self.start_polls = start_polls  # show polls that see null/loading before the container starts
        self.log_delay = 1  # GETs of a result_url answered 404 before the logs are "uploaded"
        self.refuse_destroy: set[int] = set()  # DELETE answers 200 with success: false
        self._ids = itertools.count(7000)
        self._log_urls: dict[str, list[Any]] = {}  # token -> [snapshot text, GETs so far]

    # -- scripting -------------------------------------------------------------------------------------------
    def offer_gone(self, offer_id: int) -> None:
        """The offer stays in search results but can no longer be rented (lost a race to another user)."""
        with self.lock:
            self.offers[offer_id]["_gone"] = True

    def set_state(
        self, instance_id: int, actual_status: str | None, status_msg: str = "", **fields: Any
    ) -> None:
        """Pin what ``show instance`` reports (the host is no longer consulted for this instance)."""
        with self.lock:
            self.instances[instance_id].update(actual_status=actual_status, status_msg=status_msg, _pinned=True,
                                               **fields)  # fmt: skip

    def preempt(self, instance_id: int, actual_status: str | None = "stopped") -> None:
        """Outbid: the container is killed; cur_state, intended_status and next_state all say stopped."""
        with self.lock:
            self.host.kill(str(instance_id))
            self.set_state(instance_id, actual_status, "", intended_status="stopped", cur_state="stopped",
                           next_state="stopped")  # fmt: skip

    def container_key(self, instance_id: int) -> str:
        return self.instances[instance_id]["_container_key"]

    def live_instances(self) -> list[int]:
        with self.lock:
            return sorted(self.instances)

    # -- API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        if path.startswith("/s3/"):
            return self._get_logs(path.rsplit("/", 1)[-1], headers)
        token = bearer(headers)
        parts = [p for p in path.split("/") if p]
        with self.lock:
            if token != self.api_key:
                return self._container_call(token, method, parts, body)
            if method == "POST" and parts == ["api", "v0", "bundles"]:
                return self._search(body or {})
            if method == "PUT" and parts[:3] == ["api", "v0", "asks"] and len(parts) == 4:
                return self._create(int(parts[3]), body or {})
            if (
                parts[:4] == ["api", "v0", "instances", "request_logs"]
                and method == "PUT"
                and len(parts) == 5
            ):
                return self._request_logs(int(parts[4]), body or {})
            if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4:
                iid = int(parts[3])
                if method == "GET":
                    return self._show(iid)
                if method == "PUT":
                    return self._manage(iid, body or {})
                if method == "DELETE":
                    return self._destroy(iid)
            if method == "GET" and parts == ["api", "v1", "instances"]:
                return self._list(query)
        return Reply(404, "<html><body><h1>404 Not Found</h1></body></html>", "text/html")

    def _container_call(self, token: str | None, method: str, parts: list[str], body: Any) -> Reply:
        """A CONTAINER_API_KEY may only start, stop or destroy its own instance."""
        owner = next((i for i, v in self.instances.items() if token and v["_container_key"] == token), None)
        if owner is None:
            return _err(401, "auth_error", "Invalid user key")
        if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and int(parts[3]) == owner:
            if method == "PUT" and set(body or {}) <= {"state"}:
                return self._manage(owner, body or {})
            if method == "DELETE":
                return self._destroy(owner)
        return _err(403, "not_authorized", "This key may only start, stop or destroy its own instance")

    def _search(self, q: dict) -> Reply:
        if q.get("type", "on-demand") not in _TYPES:
            return Reply(400, {"error": "invalid_request", "msg": f"bad type {q.get('type')!r}"})
        out = []
        for o in self.offers.values():
            ok = True
            for key, cond in q.items():
                if key in _SEARCH_KEYS:
                    continue
                if not isinstance(cond, dict):
                    return Reply(400, {"error": "invalid_request", "msg": f"bad filter for {key}"})
                for op, val in cond.items():
                    if op not in _OPS:
                        return Reply(400, {"error": "invalid_request", "msg": f"unknown op {op}"})
                    if key in o and not _OPS[op](o[key], val):
                        ok = False
            if ok:
                out.append({k: v for k, v in o.items() if not k.startswith("_")})
        field_, direction = (q.get("order") or [["score", "desc"]])[0]
        out.sort(key=lambda o: o.get(field_) or 0, reverse=direction == "desc")
        if q.get("type") == "bid":
            for o in out:
                o["is_bid"] = True
        return Reply(200, {"offers": out[: int(q.get("limit") or 64)]})

    def _create(self, offer_id: int, b: dict) -> Reply:
        o = self.offers.get(offer_id)
        if o is None or o.get("_gone") or o["rented"]:
            return _err(404, "invalid_args", f"error 404/3603: no_such_ask Instance type by id {offer_id} is not "
                        "available.", ask_id=offer_id)  # fmt: skip
        env = parse_env(b.get("env"))
        problem = self._invalid(b, env)
        if problem:
            return _err(400, "invalid_args", f"error 400/3467: Invalid args: {problem}", ask_id=offer_id)
        price = b.get("price")
        if price is not None and not 0.001 <= float(price) <= 128.0:
            return _err(400, "invalid_price", f"price {price} outside 0.001..128", ask_id=offer_id)
        low_bid = price is not None and float(price) < float(o["min_bid"])
        if low_bid and b.get("cancel_unavail"):
            return _err(410, "no_such_ask", f"error 410/3907: no_such_ask Instance type {offer_id} is no longer "
                        "available.", ask_id=offer_id)  # fmt: skip
        iid = next(self._ids)
        key = secrets.token_hex(16)
        inst = {
            "id": iid, "machine_id": o["machine_id"], "host_id": o["host_id"], "bundle_id": o["bundle_id"],
            "num_gpus": o["num_gpus"], "gpu_name": o["gpu_name"], "gpu_ram": o["gpu_ram"],
            "image_uuid": b["image"], "image_args": list(b.get("args") or []),
            "image_runtype": b.get("runtype") or ("args" if b.get("args") is not None else "ssh"),
            "extra_env": [[k, v] for k, v in env.items()], "onstart": b.get("onstart"), "label": b.get("label"),
            "actual_status": None, "intended_status": "running", "cur_state": "running",
            "next_state": "running", "status_msg": None, "dph_total": o["dph_total"] if price is None else price,
            "min_bid": o["min_bid"], "is_bid": price is not None, "disk_space": b.get("disk"),
            "cpu_ram": o["cpu_ram"], "cpu_cores_effective": o["cpu_cores_effective"],
            "ssh_host": f"ssh{iid % 10}.vast.ai", "ssh_port": 20000 + iid % 1000, "public_ipaddr": "203.0.113.7",
            "ports": {}, "start_date": 1761008618.2, "_polls": 0, "_pinned": False, "_started": False,
            "_request": b, "_env": env, "_container_key": key, "_ask": offer_id,
        }  # fmt: skip
        self.instances[iid] = inst
        o["rented"] = True
        if low_bid:  # the spot trap: created stopped, and the "error" still names it
            inst.update(actual_status="stopped", intended_status="stopped", cur_state="stopped",
                        next_state="stopped", status_msg="bid below current minimum", _pinned=True)  # fmt: skip
            return Reply(
                200,
                {
                    "success": False,
                    "error": "bid_below_min",
                    "new_contract": iid,
                    "msg": f"Your bid {price} is below min_bid {o['min_bid']}; instance created stopped.",
                },
            )
        if self.start_polls <= 0:
            self._start(inst)
        return Reply(200, {"success": True, "new_contract": iid, "instance_api_key": key})

    @staticmethod
    def _invalid(b: dict, env: dict[str, str] | None) -> str | None:
        if b.get("client_id") != "me" or not b.get("image"):
            return "client_id 'me' and image are required"
        if env is None:
            return "env must be a dict or a docker-flag string"
        for k, v in env.items():
            if len(v) > LIMITS["env_value"]:
                return f"env {k} longer than {LIMITS['env_value']}"
        if sum(len(k) + len(v) for k, v in env.items()) > LIMITS["env_total"]:
            return "env too long"
        if len(b["image"]) > LIMITS["image"]:
            return "image too long"
        args = (
            sum(len(a) for a in b.get("args") or [])
            + len(b.get("args_str") or "")
            + len(b.get("onstart") or "")
        )
        if args > LIMITS["args"]:
            return "args + onstart too long"
        if len(b.get("label") or "") > LIMITS["label"]:
            return "label too long"
        if b.get("disk") is not None and float(b["disk"]) < LIMITS["disk_min"]:
            return f"disk below {LIMITS['disk_min']} GB"
        return None

    def _start(self, inst: dict) -> None:
        """vast starts the container: the create's env plus what vast injects."""
        iid = inst["id"]
        env = dict(inst["_env"])
        env.update(CONTAINER_ID=str(iid), CONTAINER_API_KEY=inst["_container_key"], VAST_API_URL=self.url)
        auth = None
        login = inst["_request"].get("image_login")
        if login:
            w = shlex.split(login)
            auth = (w[-1], w[w.index("-u") + 1], w[w.index("-p") + 1])
        inst["_started"] = True
        try:
            self.host.start(str(iid), inst["image_uuid"], env, auth)
        except HostError as e:
            inst.update(actual_status="created", _pinned=True,
                        status_msg=f"Error response from daemon: failed to create task for container: "
                                   f"OCI runtime create failed: {e}")  # fmt: skip

    def _public(self, inst: dict) -> dict:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def _show(self, iid: int) -> Reply:
        inst = self.instances.get(iid)
        if inst is None:
            return Reply(200, {"instances": None})
        if not inst["_pinned"]:
            if not inst["_started"]:
                inst["_polls"] += 1
                if inst["_polls"] > self.start_polls:
                    self._start(inst)
                elif inst["_polls"] > 1:
                    inst["actual_status"] = "loading"
            if inst["_started"] and not inst["_pinned"]:
                st = self.host.state(str(iid))
                if st == "running":
                    inst.update(actual_status="running", status_msg="success, running")
                elif st == "exited":
                    inst.update(actual_status="exited", status_msg="container process exited")
                else:
                    inst.update(actual_status="offline", status_msg="host disconnected")
        return Reply(200, {"instances": self._public(inst)})

    def _list(self, query: dict) -> Reply:
        limit = min(int((query.get("limit") or ["25"])[0]), 25)
        limit = 5 if limit <= 0 else limit
        filters = json.loads((query.get("select_filters") or ["{}"])[0])
        after = int((query.get("after_token") or ["0"])[0] or 0)
        rows = [i for i in sorted(self.instances.values(), key=lambda i: i["id"]) if i["id"] > after]
        for col, cond in filters.items():
            rows = [r for r in rows if all(_OPS[op](r.get(col), v) for op, v in cond.items())]
        page = rows[:limit]
        token = str(page[-1]["id"]) if len(rows) > limit else None
        return Reply(200, {"success": True, "instances_found": len(page), "total_instances": len(rows),
                           "next_token": token, "instances": [self._public(i) for i in page]})  # fmt: skip

    def _manage(self, iid: int, b: dict) -> Reply:
        inst = self.instances.get(iid)
        if inst is None:
            return _err(404, "no_such_instance", f"Instance {iid} not found.")
        state = b.get("state")
        if state not in ("stopped", "running"):
            return _err(400, "invalid_args", "state must be stopped or running")
        if state == "stopped":
            self.host.stop(str(iid))
        elif self.host.state(str(iid)) == "exited":
            self.host.restart(str(iid))
        inst.update(intended_status=state, cur_state=state, next_state=state, actual_status=state,
                    _pinned=state == "stopped")  # fmt: skip
        return Reply(200, {"success": True})

    def _destroy(self, iid: int) -> Reply:
        if iid in self.refuse_destroy:
            return Reply(200, {"success": False, "msg": "Instance could not be destroyed, try again later"})
        inst = self.instances.pop(iid, None)
        if inst is None:
            return _err(404, "not_found", "Instance not found")
        self.host.kill(str(iid))
        self.host.remove(str(iid))
        self.destroyed.append(iid)
        if inst["_ask"] in self.offers:
            self.offers[inst["_ask"]]["rented"] = False
        return Reply(200, {"success": True, "msg": "Instance destroyed successfully"})

    def _request_logs(self, iid: int, b: dict) -> Reply:
        if iid not in self.instances:
            return Reply(404, {"error": "invalid_id", "msg": "Invalid instance id."})
        lines = self.host.logs(str(iid)).splitlines()
        tail = int(b.get("tail") or 0)
        text = "".join(line + "\n" for line in (lines[-tail:] if tail else lines))
        token = secrets.token_hex(8)
        self._log_urls[token] = [text, 0]
        url = f"{self.url}/s3/instance_logs/{token}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={token}"
        return Reply(200, {"success": True, "result_url": url, "msg": "Logs request submitted"})

    def _get_logs(self, token: str, headers: dict[str, str]) -> Reply:
        if any(k.lower() == "authorization" for k in headers):
            return Reply(400, S3_AUTH_ERROR, "application/xml")
        with self.lock:
            entry = self._log_urls.get(token)
            if entry is None:
                return Reply(404, S3_NO_KEY, "application/xml")
            entry[1] += 1
            if entry[1] <= self.log_delay:
                return Reply(404, S3_NO_KEY, "application/xml")
            return Reply(200, entry[0], "text/plain")
