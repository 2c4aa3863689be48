"""A local double of the vast.ai REST API (``/api/v0``), following ../shared/docs/clouds.md.

What it reproduces: offer search with ``{field: {op: value}}`` filters, ``order`` and ``type: bid``; create with
``PUT /asks/{id}/`` (``price`` makes it interruptible; a bid under ``min_bid`` creates the instance *stopped* and
returns an error that still carries ``new_contract``; a gone offer → ``no_such_ask``); ``actual_status`` null →
loading → running over a few polls; request_logs with a ``result_url`` that 404s until ready; destroy with
``no_such_instance`` for unknown ids. Scripting for tests (and managed jobs): ``fail_next`` (plain-text 429, 5xx
pages…), ``preempt``, ``set_state``, ``set_logs``, ``offer_gone``.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

from tests.doubles.common import ApiDouble, Reply

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
_SEARCH_KEYS = {"order", "type", "limit", "allocated_storage"}


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
) -> dict[str, Any]:
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "machine_id": machine_id if machine_id is not None else offer_id + 50000,
        "num_gpus": num_gpus,
        "gpu_name": gpu_name,
        "gpu_ram": gpu_ram,
        "dph_total": dph_total,
        "min_bid": min_bid if min_bid is not None else round(dph_total * 0.4, 4),
        "reliability": reliability,
        "reliability2": reliability,
        "verified": verified,
        "rentable": True,
        "rented": False,
        "disk_space": disk_space,
        "cuda_max_good": 12.4,
        "inet_down": 800.0,
        "geolocation": "US",
    }


class VastDouble(ApiDouble):
    def __init__(
        self, api_key: str = "vast-test-key", offers: list[dict] | None = None, start_polls: int = 2
    ):
        super().__init__(api_key)
        self.offers: dict[int, dict] = {o["id"]: dict(o) for o in (offers or [])}
        self.instances: dict[int, dict] = {}
        self.destroyed: list[int] = []
        self.start_polls = start_polls  # GETs that see null/loading before running
        self.log_delay = 1  # GETs of a result_url answered 404 before the logs are there
        self.create_then_error: int | None = (
            None  # next create makes the instance, then answers this 5xx page
        )
        self._ids = itertools.count(7000)
        self._logs: dict[int, str] = {}
        self._log_urls: dict[str, tuple[int, int]] = {}  # token -> (instance id, GETs so far)

    # -- scripting ---------------------------------------------------------------------------------------
    def offer_gone(self, offer_id: int) -> None:
        """The offer stays in search results but can no longer be rented (lost a race to another user)."""
        with self.lock:
            self.offers[offer_id]["_gone"] = True

    def set_state(
        self, instance_id: int, actual_status: str | None, status_msg: str = "", **fields: Any
    ) -> None:
        with self.lock:
            inst = self.instances[instance_id]
            inst.update(actual_status=actual_status, status_msg=status_msg, _pinned=True, **fields)

    def preempt(self, instance_id: int) -> None:
        """An interruptible instance outbid: everything says stopped while nobody asked for it."""
        self.set_state(
            instance_id,
            "stopped",
            "outbid",
            intended_status="stopped",
            cur_state="stopped",
            next_state="stopped",
        )

    def exit(self, instance_id: int, status_msg: str = "container exited") -> None:
        self.set_state(instance_id, "exited", status_msg)

    def set_logs(self, instance_id: int, text: str) -> None:
        with self.lock:
            self._logs[instance_id] = text

    def live_instances(self) -> list[int]:
        with self.lock:
            return sorted(self.instances)

    # -- API ---------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> Reply:
        if path.startswith("/logs/"):
            return self._get_logs(path.rsplit("/", 1)[-1])
        if not self.authorized(headers):
            return Reply(401, {"success": False, "error": "auth_error", "msg": "Invalid API key"})
        parts = [p for p in path.split("/") if p]
        with self.lock:
            if method == "POST" and parts == ["api", "v0", "bundles"]:
                return self._search(body or {})
            if method == "PUT" and parts[:3] == ["api", "v0", "asks"] and len(parts) == 4:
                return self._create(int(parts[3]), body or {})
            if parts[:4] == ["api", "v0", "instances", "request_logs"] and method == "PUT":
                return self._request_logs(int(parts[4]))
            if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4:
                iid = int(parts[3])
                if method == "GET":
                    return self._show(iid, query)
                if method == "PUT":
                    return self._set_state(iid, body or {})
                if method == "DELETE":
                    return self._destroy(iid)
            if method == "GET" and parts == ["api", "v1", "instances"]:
                return Reply(
                    200, {"instances": [self._public(i) for i in self.instances.values()], "next_token": None}
                )
        return Reply(404, "<html><body><h1>404 Not Found</h1></body></html>", "text/html")

    def _search(self, q: dict) -> Reply:
        bid = q.get("type") == "bid"
        out = []
        for o in self.offers.values():
            if not o["rentable"] or o["rented"]:
                continue
            ok = True
            for key, cond in q.items():
                if key in _SEARCH_KEYS:
                    continue
                if not isinstance(cond, dict):
                    return Reply(
                        400, {"success": False, "error": "invalid_args", "msg": f"bad filter for {key}"}
                    )
                for op, val in cond.items():
                    if op not in _OPS:
                        return Reply(
                            400, {"success": False, "error": "invalid_args", "msg": f"unknown op {op}"}
                        )
                    if key in o and not _OPS[op](o[key], val):
                        ok = False
            if ok:
                out.append({k: v for k, v in o.items() if not k.startswith("_")})
        field_, direction = (q.get("order") or [["dph_total", "asc"]])[0]
        out.sort(key=lambda o: o.get(field_) or 0, reverse=direction == "desc")
        if bid:
            for o in out:
                o["is_bid"] = True
        return Reply(200, {"offers": out[: int(q.get("limit") or 64)]})

    def _create(self, offer_id: int, b: dict) -> Reply:
        o = self.offers.get(offer_id)
        if o is None or o.get("_gone") or o["rented"]:
            return Reply(
                400,
                {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": f"Instance type {offer_id} is no longer available.",
                },
            )
        if b.get("client_id") != "me" or not b.get("image"):
            return Reply(
                400, {"success": False, "error": "invalid_args", "msg": "client_id and image are required"}
            )
        iid = next(self._ids)
        price = b.get("price")
        inst = {
            "id": iid,
            "machine_id": o["machine_id"],
            "ask_id": offer_id,
            "num_gpus": o["num_gpus"],
            "gpu_name": o["gpu_name"],
            "image_uuid": b["image"],
            "label": b.get("label"),
            "actual_status": None,
            "intended_status": "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": "",
            "dph_total": o["dph_total"] if price is None else price,
            "is_bid": price is not None,
            "disk_space": b.get("disk"),
            "ssh_host": f"ssh{iid % 10}.vast.ai",
            "ssh_port": 20000 + iid % 1000,
            "public_ipaddr": "203.0.113.7",
            "ports": {},
            "_polls": 0,
            "_pinned": False,
            "_request": b,
        }
        self.instances[iid] = inst
        o["rented"] = True
        if price is not None and float(price) < float(o["min_bid"]):
            inst.update(actual_status="stopped", intended_status="stopped", cur_state="stopped", next_state="stopped",
                        status_msg="bid below current minimum", _pinned=True)  # fmt: skip
            return Reply(
                400,
                {"success": False, "error": "insufficient_bid", "msg": f"Your bid {price} is below min_bid {o['min_bid']}; instance created stopped.", "new_contract": iid},
            )  # fmt: skip
        if self.create_then_error:
            status, self.create_then_error = self.create_then_error, None
            return Reply(status, "<html><body><h1>504 Gateway Time-out</h1></body></html>", "text/html")
        return Reply(200, {"success": True, "new_contract": iid})

    def _public(self, inst: dict) -> dict:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def _show(self, iid: int, query: dict) -> Reply:
        inst = self.instances.get(iid)
        if inst is None:
            return Reply(200, {"instances": None})
        if not inst["_pinned"]:
            inst["_polls"] += 1
            if inst["_polls"] > self.start_polls:
                inst["actual_status"] = "running"
            elif inst["_polls"] > 1:
                inst["actual_status"] = "loading"
        return Reply(200, {"instances": self._public(inst)})

    def _set_state(self, iid: int, b: dict) -> Reply:
        inst = self.instances.get(iid)
        if inst is None:
            return Reply(
                404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."}
            )
        state = b.get("state")
        if state not in ("stopped", "running"):
            return Reply(
                400, {"success": False, "error": "invalid_args", "msg": "state must be stopped or running"}
            )
        inst.update(
            intended_status=state, cur_state=state, next_state=state, actual_status=state, _pinned=True
        )
        return Reply(200, {"success": True})

    def _destroy(self, iid: int) -> Reply:
        inst = self.instances.pop(iid, None)
        if inst is None:
            return Reply(
                404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."}
            )
        self.destroyed.append(iid)
        if inst["ask_id"] in self.offers:
            self.offers[inst["ask_id"]]["rented"] = False
        return Reply(200, {"success": True})

    def _request_logs(self, iid: int) -> Reply:
        if iid not in self.instances:
            return Reply(
                404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."}
            )
        token = secrets.token_hex(8)
        self._log_urls[token] = (iid, 0)
        return Reply(200, {"success": True, "result_url": f"{self.url}/logs/{token}"})

    def _get_logs(self, token: str) -> Reply:
        with self.lock:
            if token not in self._log_urls:
                return Reply(404, "<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            iid, n = self._log_urls[token]
            self._log_urls[token] = (iid, n + 1)
            if n < self.log_delay:
                return Reply(404, "<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return Reply(200, self._logs.get(iid, ""), "text/plain")
