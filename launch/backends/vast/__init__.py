"""vast.ai: ``api`` (its REST API, one method per call) and ``compute`` (the ``Compute`` interface)."""

from launch.backends.vast.compute import VastCompute

__all__ = ["VastCompute"]
