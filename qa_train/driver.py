"""The container's NVIDIA driver floor: stop before training, with one line, on a host whose driver is too old.

Why: a CUDA 12.8 build of torch (or vLLM) on an older driver fails only when it first touches the GPU — in the
eval stage, after training has been paid for. The GPU image declares its floor (``QA_MIN_DRIVER``, the same
value as its ``qa-expert.min-driver`` label; docker/Dockerfile) and ``python -m qa_train run`` calls
:func:`enforce` before any stage. The launcher filters offers on the same table (:data:`MIN_DRIVER`).

The driver version is read where the kernel module publishes it, ``/proc/driver/nvidia/version`` (mounted into
containers by the NVIDIA container toolkit), else from ``nvidia-smi``. ``QA_NVIDIA_VERSION_FILE`` points the
same reader at another file in that format (tests, or a host that mounts it elsewhere).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ENV_MIN_DRIVER = "QA_MIN_DRIVER"
ENV_VERSION_FILE = "QA_NVIDIA_VERSION_FILE"
PROC_VERSION = "/proc/driver/nvidia/version"

# NVIDIA's CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding Driver Versions" (Linux x86_64,
# the GA release of each minor version): the driver that runs that CUDA natively. vast's ``cuda_max_good`` and
# RunPod's host CUDA version are derived from the same driver, so "CUDA >= X" and "driver >= MIN_DRIVER[X]"
# select the same hosts.
MIN_DRIVER: dict[str, str] = {
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

_PROC_LINE = re.compile(r"^NVRM version:.*?\s(\d{3,4}\.\d+(?:\.\d+)?)\s", re.M)


class DriverError(RuntimeError):
    """The host's driver is below the image's floor (or the floor itself is malformed)."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"570.124.06"`` -> ``(570, 124, 6)``: drivers compare numerically, part by part."""
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise DriverError(f"not a driver version: {text!r}")
    return tuple(int(p) for p in text.strip().split("."))


def at_least(found: str, needed: str) -> bool:
    """Whether driver ``found`` is ``needed`` or newer."""
    return parse_version(found) >= parse_version(needed)


def min_driver_for_cuda(cuda: str) -> str:
    """The driver floor for a CUDA ``major.minor`` (or ``major.minor.patch``) from :data:`MIN_DRIVER`."""
    mm = ".".join(cuda.strip().split(".")[:2])
    if mm not in MIN_DRIVER:
        raise DriverError(f"no known driver floor for CUDA {cuda} (known: {', '.join(MIN_DRIVER)})")
    return MIN_DRIVER[mm]


def cuda_versions_from(cuda: str) -> list[str]:
    """Every CUDA ``major.minor`` in :data:`MIN_DRIVER` at or above ``cuda``: RunPod's allowedCudaVersions."""
    floor = parse_version(".".join(cuda.split(".")[:2]))
    return [v for v in MIN_DRIVER if parse_version(v) >= floor]


def parse_proc_version(text: str) -> str | None:
    """The version in ``/proc/driver/nvidia/version``'s NVRM line (proprietary and open kernel modules)."""
    m = _PROC_LINE.search(text)
    return m[1] if m else None


def read_driver_version() -> str | None:
    """This host's NVIDIA driver version, or None when no NVIDIA driver is visible (a CPU machine)."""
    path = Path(os.environ.get(ENV_VERSION_FILE) or PROC_VERSION)
    try:
        found = parse_proc_version(path.read_text(errors="replace"))
    except OSError:
        found = None
    if found or os.environ.get(ENV_VERSION_FILE):
        return found
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        r = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
    return first if re.fullmatch(r"\d+(\.\d+)+", first) else None


def check(needed: str, found: str | None) -> str | None:
    """None when ``found`` satisfies ``needed`` (or no driver is present: CPU stages); else the error line."""
    if found is None:
        return None
    if at_least(found, needed):
        return None
    return (
        f"NVIDIA driver {found} is older than {needed}, the minimum this image needs "
        f"(its CUDA libraries would fail at first use): run it on a host with driver >= {needed}"
    )


def enforce(environ: dict[str, str] | None = None) -> str | None:
    """The error line when the image declares a floor (``QA_MIN_DRIVER``) and this host's driver is below it."""
    env = os.environ if environ is None else environ
    needed = (env.get(ENV_MIN_DRIVER) or "").strip()
    if not needed:
        return None
    try:
        parse_version(needed)
    except DriverError as e:
        return f"{ENV_MIN_DRIVER}: {e}"
    return check(needed, read_driver_version())
