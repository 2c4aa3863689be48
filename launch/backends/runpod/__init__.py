"""RunPod: ``api`` (GraphQL + REST v2 logs, one method per call) and ``compute`` (the ``Compute`` interface)."""

from launch.backends.runpod.compute import RunpodCompute

__all__ = ["RunpodCompute"]
