"""Where instances run: one ``Compute`` per cloud (``launch/backends/<cloud>/``) plus local Docker.

``get_compute(name)`` imports only the one asked for. ``configured_clouds()`` is what ``--backend cheapest``
means: every cloud whose API key is set.
"""

from __future__ import annotations

import os
from typing import Any

from launch.backends.base import CloudError, Compute

NAMES = ("local", "vast", "runpod", "cheapest")
CLOUD_KEYS = {"vast": "VAST_API_KEY", "runpod": "RUNPOD_API_KEY"}


def get_compute(name: str, **kw: Any) -> Compute:
    """The compute called ``name`` (local, vast, runpod); ``kw`` go to its constructor."""
    if name == "local":
        from launch.backends.local import LocalCompute

        return LocalCompute(**kw)
    if name == "vast":
        from launch.backends.vast import VastCompute

        return VastCompute(**kw)
    if name == "runpod-cluster":  # --nodes > 1: one RunPod Instant Cluster per instance
        from launch.backends.runpod.clusters import RunpodClusterCompute

        return RunpodClusterCompute(**kw)
    if name == "runpod":
        from launch.backends.runpod import RunpodCompute

        return RunpodCompute(**kw)
    if name == "cheapest":
        raise ValueError("'cheapest' is every configured cloud: use configured_clouds()")
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")


def configured_clouds(**kw: dict[str, Any]) -> dict[str, Compute]:
    """Every cloud whose API key is set (env var or ``api_key`` in that cloud's ``kw``), by name.

    ``kw`` maps a cloud name to its constructor arguments, e.g. ``configured_clouds(vast={"api_url": u})``.
    Raises CloudError naming the env vars when no cloud is configured."""
    out: dict[str, Compute] = {}
    for name, env in CLOUD_KEYS.items():
        args = dict(kw.get(name) or {})
        if args.get("api_key") or os.environ.get(env):
            out[name] = get_compute(name, **args)
    if not out:
        raise CloudError(
            "no cloud is configured: set "
            + " and/or ".join(CLOUD_KEYS.values())
            + " (or their *_FILE variants)",
            cloud="cheapest",
        )
    return out
