"""A thin typed client of RunPod's APIs as documented (github:runpod/docs: ``sdks/graphql/manage-pods.mdx``,
``api-reference/openapi.json`` for REST v1, ``api-reference-v2/openapi.json`` for the v2 log stream) and as
runpodctl and dstack call them.

GraphQL (``POST https://api.runpod.io/graphql``) always with **variables**, never values pasted into the query
text (a quote in an env value must not break it). GraphQL reports errors in HTTP 200 as ``{"errors": [...]}``:
they become ``RunpodApiError`` with each message and ``extensions.code``. Pod logs: REST v2
``GET /v2/pods/{id}/logs`` — server-sent events on a connection the server keeps open.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from launch.backends.base import CloudError
from launch.backends.transport import Answer, Transport, error_message

DEFAULT_GRAPHQL_URL = "https://api.runpod.io/graphql"
MAX_LOG_TAIL = 5000  # api-reference-v2: LogTail maximum

Q_GPU_TYPES = """
query GpuTypes($input: GpuTypeFilter, $lowestPriceInput: GpuLowestPriceInput!) {
  gpuTypes(input: $input) {
    id displayName memoryInGb
    lowestPrice(input: $lowestPriceInput) { minimumBidPrice uninterruptablePrice stockStatus }
  }
}"""
M_ON_DEMAND = """
mutation Deploy($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { id name imageName machineId desiredStatus }
}"""
M_SPOT = """
mutation DeploySpot($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id name imageName machineId desiredStatus }
}"""
Q_POD = """
query Pod($input: PodFilter!) {
  pod(input: $input) {
    id name desiredStatus lastStatusChange costPerHr machineId
    runtime { uptimeInSeconds }
  }
}"""
Q_MY_PODS = """
query MyPods {
  myself { pods { id name desiredStatus } }
}"""
M_STOP = """
mutation Stop($input: PodStopInput!) {
  podStop(input: $input) { id desiredStatus }
}"""
M_TERMINATE = """
mutation Terminate($input: PodTerminateInput!) {
  podTerminate(input: $input)
}"""
M_SAVE_REGISTRY_AUTH = """
mutation SaveRegistryAuth($input: SaveRegistryAuthInput!) {
  saveRegistryAuth(input: $input) { id name }
}"""
Q_REGISTRY_AUTHS = """
query RegistryAuths {
  myself { containerRegistryCreds { id name } }
}"""


class RunpodApiError(CloudError):
    """A RunPod call failed. ``messages``/``codes``: the GraphQL ``errors`` (message, extensions.code)."""

    def __init__(
        self, message: str, *, messages: list[str] | None = None, codes: list[str] | None = None, **kw: Any
    ):
        super().__init__(message, cloud="runpod", **kw)
        self.messages = messages or []
        self.codes = codes or []


class RunpodApi:
    def __init__(
        self,
        api_key: str,
        graphql_url: str | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        self.graphql_url = graphql_url or os.environ.get("RUNPOD_API_URL") or DEFAULT_GRAPHQL_URL
        parts = urlsplit(self.graphql_url)
        self.v2_base = f"{parts.scheme}://{parts.netloc}/v2"  # the v2 REST API lives on the GraphQL host
        self.http = Transport(
            "runpod", {"Authorization": f"Bearer {api_key}"}, retries=retries, backoff=backoff
        )

    # -- GraphQL ---------------------------------------------------------------------------------------------
    def gql(
        self, call: str, query: str, variables: dict[str, Any] | None = None, *, create: bool = False
    ) -> dict:
        payload = {"query": query, "variables": variables or {}}
        send = self.http.create if create else self.http.call
        a: Answer = send(call, "POST", self.graphql_url, json=payload)
        body = a.body if isinstance(a.body, dict) else {}
        errors = body.get("errors")
        if errors:
            msgs = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
            codes = [str((e.get("extensions") or {}).get("code", "")) for e in errors if isinstance(e, dict)]
            raise RunpodApiError(f"runpod: {call}: {'; '.join(msgs)}", call=call, status=a.status, body=a.body,
                                 messages=msgs, codes=codes)  # fmt: skip
        if not a.ok or "data" not in body:
            raise RunpodApiError(f"runpod: {call} → HTTP {a.status}: {error_message(a.body)}", call=call,
                                 status=a.status, body=a.body)  # fmt: skip
        return body["data"] or {}

    def gpu_types(self, gpu_id: str, lowest_price_input: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.gql(f"gpuTypes {gpu_id}", Q_GPU_TYPES, {"input": {"id": gpu_id},
                                                             "lowestPriceInput": lowest_price_input})  # fmt: skip
        return list(data.get("gpuTypes") or [])

    def deploy(self, pod_input: dict[str, Any], *, interruptible: bool) -> dict[str, Any]:
        """``podRentInterruptable`` / ``podFindAndDeployOnDemand`` — sent once, never retried."""
        root, mutation = (
            ("podRentInterruptable", M_SPOT) if interruptible else ("podFindAndDeployOnDemand", M_ON_DEMAND)
        )
        data = self.gql(root, mutation, {"input": pod_input}, create=True)
        pod = data.get(root) or {}
        if not pod.get("id"):
            raise RunpodApiError(f"runpod: {root} answered no pod id: {data}", call=root)
        return pod

    def pod(self, pod_id: str) -> dict[str, Any] | None:
        return self.gql(f"pod {pod_id}", Q_POD, {"input": {"podId": pod_id}}).get("pod")

    def my_pods(self) -> list[dict[str, Any]]:
        return list((self.gql("myself.pods", Q_MY_PODS).get("myself") or {}).get("pods") or [])

    def stop_pod(self, pod_id: str) -> None:
        self.gql(f"podStop {pod_id}", M_STOP, {"input": {"podId": pod_id}})

    def terminate_pod(self, pod_id: str) -> None:
        self.gql(f"podTerminate {pod_id}", M_TERMINATE, {"input": {"podId": pod_id}})

    def save_registry_auth(self, name: str, username: str, password: str) -> str:
        data = self.gql("saveRegistryAuth", M_SAVE_REGISTRY_AUTH,
                        {"input": {"name": name, "username": username, "password": password}})  # fmt: skip
        return str((data.get("saveRegistryAuth") or {})["id"])

    def registry_auths(self) -> list[dict[str, Any]]:
        me = self.gql("myself.containerRegistryCreds", Q_REGISTRY_AUTHS).get("myself") or {}
        return list(me.get("containerRegistryCreds") or [])

    # -- REST v2 logs ----------------------------------------------------------------------------------------
    def log_events(
        self, pod_id: str, *, tail: int, last_event_id: str | None, read_timeout: float
    ) -> Iterator[tuple[str | None, str]]:
        """(event id, line) of the container's log; ends when the server closes the stream or nothing arrives
        for ``read_timeout`` seconds. ``last_event_id`` resumes after that event (no line twice)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        params = {"source": "container", "tail": max(0, min(tail, MAX_LOG_TAIL))}
        resp = self.http.stream(f"logs {pod_id}", f"{self.v2_base}/pods/{pod_id}/logs", read_timeout=read_timeout,
                                params=params, headers=headers)  # fmt: skip
        try:
            yield from _sse(resp)
        finally:
            resp.close()


def _sse(resp: requests.Response) -> Iterator[tuple[str | None, str]]:
    """Server-sent events → (id, line) of ``{"source", "line", "ts"}`` payloads from the container."""
    buf = b""
    ev_id: str | None = None
    data: list[str] = []
    while True:
        try:
            chunk = resp.raw.read1(65536)  # whatever has arrived, without waiting for a full buffer
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
            return
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if line == "":
                if data:
                    text = "\n".join(data)
                    try:
                        ev = json.loads(text)
                    except ValueError:
                        ev = {"line": text}
                    if isinstance(ev, dict) and ev.get("source", "container") == "container":
                        yield ev_id, str(ev.get("line", ""))
                ev_id, data = None, []
            elif line.startswith("id:"):
                ev_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
