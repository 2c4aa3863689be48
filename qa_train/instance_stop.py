"""Stop this container's own cloud instance once the run is over, so billing stops with the work.

Called by ``qa_train run`` after the report is final and the artifacts are committed. It uses only what each
cloud injects into the instance, scoped to that one instance (checked against the clouds' docs):

* vast.ai: ``PUT {VAST_API_URL or https://console.vast.ai}/api/v0/instances/{CONTAINER_ID}/`` with JSON
  ``{"state": "stopped"}`` and ``Authorization: Bearer {CONTAINER_API_KEY}`` (api-reference stop_instance);
* RunPod: ``POST {RUNPOD_REST_URL or https://rest.runpod.io/v1}/pods/{RUNPOD_POD_ID}/stop`` with
  ``Authorization: Bearer {RUNPOD_API_KEY}`` (pods/manage-pods.mdx; RunPod would otherwise restart the
  container forever with ``desiredStatus: RUNNING``).
* RunPod Instant Clusters (``runpod-cluster``): node 0 stops its own pod the same way, once the group's report is
  final (the group then reads as stopped and the controller deletes the cluster); another node does not stop its
  pod after its train stage: a stopped node while node 0 still merges and evaluates is what a lost node looks
  like, and the controller would relaunch the group.

Stop, not destroy: the controller (or the user) still reads the logs and then destroys it. A failure is one
warning (never the key) and never changes the run's exit code or report: the controller stops what is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from qa_train.contract import ENV_BACKEND, ENV_KEEP_INSTANCE, RUNPOD_INJECTED, VAST_INJECTED

VAST_DEFAULT = "https://console.vast.ai"
RUNPOD_REST_DEFAULT = "https://rest.runpod.io/v1"
TIMEOUT_S = (5.0, 15.0)


@dataclass(frozen=True)
class StopRequest:
    method: str
    url: str
    key: str
    json: dict | None
    what: str  # "vast instance 123"


def plan_stop(env: Mapping[str, str]) -> StopRequest | str | None:
    """The request that stops this instance; a sentence when it cannot; None when nothing is to be done."""
    backend = (env.get(ENV_BACKEND) or "").strip().lower()
    if backend == "runpod-cluster":  # NODE_RANK: RunPod's node variable (instant-clusters/configuration.mdx)
        rank = (env.get("NODE_RANK") or "0").strip()
        if rank != "0":
            return f"node {rank} of a RunPod cluster: node 0 stops its pod once the run is over"
        backend = "runpod"
    if backend not in ("vast", "runpod"):
        return None
    if env.get(ENV_KEEP_INSTANCE, "").strip() == "1":
        return f"{ENV_KEEP_INSTANCE}=1: leaving the {backend} instance running"
    names = VAST_INJECTED if backend == "vast" else RUNPOD_INJECTED
    missing = [n for n in names if not env.get(n)]
    if missing:
        return (
            f"cannot stop the {backend} instance myself: {', '.join(missing)} not set "
            "(the launcher's controller will stop it)"
        )
    instance, key = env[names[0]].strip(), env[names[1]].strip()
    if backend == "vast":
        base = (env.get("VAST_API_URL") or VAST_DEFAULT).rstrip("/")
        return StopRequest(
            "PUT",
            f"{base}/api/v0/instances/{instance}/",
            key,
            {"state": "stopped"},
            f"vast instance {instance}",
        )
    base = (env.get("RUNPOD_REST_URL") or RUNPOD_REST_DEFAULT).rstrip("/")
    return StopRequest("POST", f"{base}/pods/{instance}/stop", key, None, f"RunPod pod {instance}")


def _send(req: StopRequest, attempts: int) -> str | None:
    """None on success, else why it failed (without the key)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=attempts - 1,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"PUT", "POST"}),  # stopping twice is harmless
        raise_on_status=False,
    )
    with requests.Session() as s:
        s.mount("http://", HTTPAdapter(max_retries=retry))
        s.mount("https://", HTTPAdapter(max_retries=retry))
        try:
            resp = s.request(
                req.method,
                req.url,
                json=req.json,
                headers={"Authorization": f"Bearer {req.key}", "Accept": "application/json"},
                timeout=TIMEOUT_S,
            )
        except requests.RequestException as e:
            return type(e).__name__ + ": " + str(e).replace(req.key, "***")[:300]
    if not resp.ok:
        return f"HTTP {resp.status_code}: {resp.text[:200].replace(req.key, '***')}"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("success") is False:  # vast answers 200 with success false
        return f"refused: {str(body.get('msg') or body.get('error') or body)[:200]}"
    return None


def stop_self(env: Mapping[str, str] | None = None, attempts: int = 4) -> str | None:
    """Stop this instance when the backend is a cloud; returns the one line it printed (None: not a cloud)."""
    env = os.environ if env is None else env
    plan = plan_stop(env)
    if plan is None:
        return None
    if isinstance(plan, str):
        line = f"[run] instance: {plan}"
    else:
        problem = _send(plan, attempts)
        if problem is None:
            line = f"[run] instance: asked to stop {plan.what} ({plan.method} {plan.url})"
        else:
            line = f"[run] instance: warning: could not stop {plan.what}: {problem} (the controller will)"
    print(line, file=sys.stderr, flush=True)
    return line
