"""Local Docker: ``compute`` (the ``Compute`` interface over the docker SDK)."""

from launch.backends.local.compute import LABEL, LocalCompute, container_name

__all__ = ["LABEL", "LocalCompute", "container_name"]
