"""Backends: where a rendered spec runs. ``get_backend(name)`` imports only the one asked for."""

from __future__ import annotations

from launch.backends.base import Backend

NAMES = ("local", "vast", "runpod", "cheapest")


def get_backend(name: str, **kwargs) -> Backend:
    if name == "local":
        from launch.backends.local import LocalBackend

        return LocalBackend(**kwargs)
    if name == "vast":
        from launch.backends.vast import VastBackend

        return VastBackend(**kwargs)
    if name == "runpod":
        from launch.backends.runpod import RunpodBackend

        return RunpodBackend(**kwargs)
    if name == "cheapest":
        from launch.backends.cheapest import CheapestBackend

        return CheapestBackend(**kwargs)
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")
