"""The GPU image's invariants (issue 20), checked without building it, and the driver floor it declares.

docker/Dockerfile cannot be built in CI (no CUDA base, no GPU; scripts/build-gpu-image.sh builds it by hand), so
this reads it: DeepSpeed ops prebuilt for CUDA with a portable CPU Adam, every wheel hash-checked, flash-attn only
from a pinned wheel unless a source build is asked for, a runtime that can compile, and labels naming the driver
floor. Then the floor itself: the container stops on an older driver (through the same reader that reads the real
one), vast offers below it are skipped and named by ``offers``, and RunPod deploys accept only hosts above it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.backends.base import LaunchRequest, NoCapacity, OfferQuery
from launch.backends.runpod.compute import RunpodCompute
from launch.backends.vast.compute import VastCompute
from launch.gpus import PROFILES
from qa_train import driver
from tests.doubles.runpod_api import RunpodDouble, make_gpu_type
from tests.doubles.vast_api import VastDouble, make_offer

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
PORTABLE_CC = REPO / "docker" / "portable-cc.sh"
CHECK_DS = REPO / "docker" / "check-ds-build.py"


# -- the Dockerfile's invariants ---------------------------------------------------------------------------
def instructions(text: str) -> list[str]:
    """Dockerfile instructions with their continuation lines joined and comment lines dropped."""
    out: list[str] = []
    cur = ""
    in_heredoc = False
    for line in text.splitlines():
        if not in_heredoc and line.lstrip().startswith("#"):
            continue
        cur += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line + "\n"
        if not line.endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return [i for i in out if i]


def stages(text: str) -> list[list[str]]:
    """The instructions of each ``FROM`` stage (the global ARGs before the first FROM are stage 0)."""
    out: list[list[str]] = [[]]
    for ins in instructions(text):
        if ins.startswith("FROM "):
            out.append([])
        out[-1].append(ins)
    return out


def arg_default(text: str, name: str) -> str | None:
    m = re.search(rf"^ARG {name}=(\S*)\s*$", text, flags=re.M)
    return m[1].strip('"') if m else None


def dockerfile_problems(text: str) -> list[str]:
    """Every broken invariant of a GPU training Dockerfile, one line each (empty: all hold)."""
    problems: list[str] = []
    runs = [i for i in instructions(text) if i.startswith("RUN ")]
    everything = "\n".join(instructions(text))
    st = stages(text)
    # 1. DeepSpeed ops: built for CUDA, the ones we use requested, through a portable compiler, then checked.
    ds = [r for r in runs if "DS_BUILD_CPU_ADAM=1" in r]
    if not ds:
        problems.append("DeepSpeed: no RUN prebuilds cpu_adam (DS_BUILD_CPU_ADAM=1)")
    for r in ds:
        if "DS_ACCELERATOR=cuda" not in r:
            problems.append(
                "DeepSpeed: ops built without DS_ACCELERATOR=cuda (recorded as 'cpu': JIT on the GPU host)"
            )
        if "DS_BUILD_FUSED_ADAM" not in r:
            problems.append("DeepSpeed: fused_adam is not prebuilt (DS_BUILD_FUSED_ADAM)")
        if not re.search(r"\bCC=\S*portable-cc\b", r):
            problems.append(
                "DeepSpeed: CPU Adam is compiled with the builder's -march=native (no portable-cc)"
            )
        if "check-ds-build.py" not in r or "fused_adam" not in r:
            problems.append("DeepSpeed: the build does not fail when accelerator != cuda or an op is missing")
    if re.search(r"-march=native", everything):
        problems.append("-march=native in the Dockerfile: the image would follow the builder's CPU")
    # 2. Every pip install hash-checked (the project's own source, --no-deps, is the one exception).
    for r in runs:
        for cmd in re.split(r"&&|;|\|\|", r):
            if re.search(r"\bpip install\b", cmd) and "--require-hashes" not in cmd:
                if "/opt/qa-expert/src" in cmd or "/src" in cmd.split()[-1]:
                    continue
                problems.append(f"pip install without --require-hashes: {cmd.strip()[:90]}")
    if re.search(r"--hash=/d|/--hash=/d|-c /opt/constraints", everything):
        problems.append("a hash-stripped constraints file: torch / nvidia-* installed without hashes")
    # 3. flash-attn: pinned wheel hash, a source build only when asked for (sm80/sm90, MAX_JOBS from memory).
    sha = arg_default(text, "FLASH_ATTN_SHA256") or ""
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or "--hash=sha256:${FLASH_ATTN_SHA256}" not in everything:
        problems.append("flash-attn: its wheel's sha256 is not pinned and checked")
    fa = [r for r in runs if "flash-attn" in r or "flash_attn" in r]
    for r in fa:
        for m in re.finditer(r"pip install[^;&]*?(--no-binary flash-attn|\"flash-attn==)", r):
            guard = r[: m.start()].rfind("FLASH_ATTN_SOURCE_BUILD")
            if guard < 0 or not re.search(
                r"FLASH_ATTN_SOURCE_BUILD\}?\"? *= *\"?1", r[guard - 3 : m.start()]
            ):
                problems.append("flash-attn: a missing wheel silently starts a source build")
            if 'FLASH_ATTN_CUDA_ARCHS="80;90"' not in r or "MemAvailable" not in r:
                problems.append(
                    "flash-attn: a source build not limited to sm80/sm90 with MAX_JOBS from memory"
                )
        if fa and not re.search(r"else[^;]*;? *echo \"error:[^\"]*\" *>&2; *exit 1", r) and "curl" in r:
            problems.append("flash-attn: no wheel does not fail the build with one error line")
    if not fa:
        problems.append("flash-attn: never installed")
    # 4. Runtime stage: compilers and headers for Triton, no cuDNN base, the driver floor labelled and enforced.
    runtime = "\n".join(st[-1])
    if not re.search(r"python\$\{PYTHON_VERSION\}-dev", runtime) or not re.search(r"\bg(cc|\+\+)\b", runtime):
        problems.append("runtime: no Python headers and C/C++ compiler (Triton compiles at first use)")
    for ins in st[0] + [s[0] for s in st[1:] if s]:
        if "cudnn" in ins.lower():
            problems.append(f"a cuDNN base image (the venvs ship cuDNN wheels): {ins[:80]}")
    if re.search(r"(?<!TORCH_)NCCL_ASYNC_ERROR_HANDLING", everything):
        problems.append("deprecated NCCL_ASYNC_ERROR_HANDLING (TORCH_NCCL_ASYNC_ERROR_HANDLING replaces it)")
    if "software-properties-common" in everything:
        problems.append("build tools installed and thrown away (software-properties-common)")
    labels = " ".join(i for i in st[-1] if i.startswith("LABEL "))
    for key in ("qa-expert.cuda", "qa-expert.min-driver", "qa-expert.venv.train.cuda", "qa-expert.venv.eval.cuda",
                "qa-expert.skipped"):  # fmt: skip
        if f"{key}=" not in labels:
            problems.append(f"runtime: no {key} label")
    cuda, floor = arg_default(text, "QA_CUDA"), arg_default(text, "QA_MIN_DRIVER")
    if cuda and floor and driver.MIN_DRIVER.get(cuda) != floor:
        problems.append(
            f"QA_MIN_DRIVER {floor} is not NVIDIA's floor for CUDA {cuda} ({driver.MIN_DRIVER.get(cuda)})"
        )
    if "QA_MIN_DRIVER=${QA_MIN_DRIVER}" not in runtime:
        problems.append("runtime: QA_MIN_DRIVER not in the environment (the container's own driver check)")
    if "above the image floor" not in everything:
        problems.append("the build does not check that every venv's CUDA is within the labelled floor")
    return problems


def test_the_gpu_dockerfile_holds_every_invariant() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("DS_ACCELERATOR=cuda DS_BUILD_OPS=0", "DS_BUILD_OPS=0", "without DS_ACCELERATOR=cuda"),
        ("CC=/opt/build/bin/portable-cc ", "", "-march=native (no portable-cc)"),
        ('python /opt/build/check-ds-build.py "$need"', "true", "does not fail when accelerator"),
        ("--require-hashes -r /opt/locks/gpu-base.txt", "-r /opt/locks/gpu-base.txt", "without --require-hashes"),
        ('elif [ "${FLASH_ATTN_SOURCE_BUILD}" = 1 ]; then', "else", "silently starts a source build"),
        ("ARG FLASH_ATTN_SHA256=f25da", "ARG FLASH_ATTN_SHA256=", "sha256 is not pinned"),
        ("ARG RUNTIME_BASE_IMAGE=ubuntu:", "ARG RUNTIME_BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu", "cuDNN"),
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "NCCL_ASYNC_ERROR_HANDLING=1", "deprecated"),
        ('"python${PYTHON_VERSION}-dev" \\\n && rm -rf /var/lib/apt/lists/* \\\n && (userdel', "\\\n && (userdel",
         "no Python headers"),
        ('qa-expert.min-driver="${QA_MIN_DRIVER}" \\\n', "", "no qa-expert.min-driver label"),
        ("ARG QA_MIN_DRIVER=570.26", "ARG QA_MIN_DRIVER=535.54.03", "not NVIDIA's floor"),
    ],
)  # fmt: skip
def test_each_invariant_catches_its_regression(old: str, new: str, problem: str) -> None:
    """The checks are real: undoing one fix in today's Dockerfile is reported by its own line."""
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile changed: update this test ({old!r})"
    found = dockerfile_problems(text.replace(old, new, 1))
    assert any(problem in p for p in found), found


def test_the_vllm_image_installs_hash_checked_on_a_plain_base() -> None:
    text = (REPO / "docker" / "Dockerfile.vllm").read_text()
    runs = [i for i in instructions(text) if i.startswith("RUN ")]
    installs = [c for r in runs for c in r.split("&&") if "pip install" in c and "/src" not in c]
    assert installs and all("--require-hashes" in c for c in installs), installs
    assert "cudnn" not in text.lower() and "python${PYTHON_VERSION}-dev" in text and "gcc" in text
    assert 'qa-expert.cuda="${QA_CUDA}"' in text and "QA_MIN_DRIVER=${QA_MIN_DRIVER}" in text
    assert arg_default(text, "QA_MIN_DRIVER") == driver.MIN_DRIVER[arg_default(text, "QA_CUDA") or ""]


def test_every_venv_of_the_image_is_within_its_cuda_floor() -> None:
    """Both locks pin CUDA 12.x user-space wheels (no CUDA 13 package): the labelled floor covers them."""
    for name in ("gpu.txt", "eval.txt", "eval-py311.txt"):
        lock = (REPO / "docker" / "locks" / name).read_text()
        assert re.search(r"^nvidia-cuda-runtime-cu12==12\.8\.", lock, re.M), name
        assert not re.search(r"^nvidia-cuda-runtime==", lock, re.M), f"{name}: a CUDA 13 runtime"
    assert arg_default(DOCKERFILE.read_text(), "QA_CUDA") == "12.8"


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("objdump") is None, reason="needs gcc + objdump"
)
def test_portable_cc_turns_the_builders_cpu_flags_into_avx2(tmp_path: Path) -> None:
    """What DeepSpeed's CPU builder passes (-march=native, -D__AVX512__ on an AVX-512 builder) comes out as
    x86-64-v3 with the 256-bit path: the object has no zmm (AVX-512) operand even where the source would use one."""
    src = tmp_path / "simd.c"
    src.write_text(
        "#include <immintrin.h>\n#ifdef __AVX512__\n__m512 f(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }\n"
        "#else\n__m256 f(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }\n#endif\n"
    )
    wrapper = tmp_path / "portable-cc"
    shutil.copy(PORTABLE_CC, wrapper)
    wrapper.chmod(0o755)
    args = ["-O2", "-march=native", "-D__AVX512__", "-mavx512f", "-c", str(src), "-o"]
    # the raw flags with AVX-512 allowed do produce zmm: the objdump count below can see it
    raw = subprocess.run(["gcc", *args, str(tmp_path / "raw.o")], capture_output=True, text=True)
    assert raw.returncode == 0, raw.stderr
    assert (
        "zmm"
        in subprocess.run(["objdump", "-d", str(tmp_path / "raw.o")], capture_output=True, text=True).stdout
    )
    args.remove("-mavx512f")
    r = subprocess.run([str(wrapper), *args, str(tmp_path / "p.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "-march=native -> -march=x86-64-v3" in r.stderr and "-D__AVX512__ -> -D__AVX256__" in r.stderr
    dis = subprocess.run(["objdump", "-d", str(tmp_path / "p.o")], capture_output=True, text=True).stdout
    assert "zmm" not in dis and "ymm" in dis


def test_the_build_check_refuses_a_cpu_build_of_deepspeed() -> None:
    """docker/check-ds-build.py against this (CPU) venv's DeepSpeed: not built for cuda → one error line."""
    r = subprocess.run([sys.executable, str(CHECK_DS), "cpu_adam,fused_adam"], capture_output=True, text=True,
                       env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "error: DeepSpeed ops were built for accelerator 'cpu', not 'cuda'" in r.stderr, r.stderr


# -- the container's driver check ----------------------------------------------------------------------------
PROC_PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
PROC_OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)"
    "  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n"
)


def test_proc_version_parsing_and_the_floor_table() -> None:
    assert driver.parse_proc_version(PROC_PROPRIETARY) == "535.104.05"
    assert driver.parse_proc_version(PROC_OPEN) == "580.65.06"
    assert driver.parse_proc_version("no driver here\n") is None
    assert (
        driver.min_driver_for_cuda("12.8.1") == "570.26" and driver.min_driver_for_cuda("13.0") == "580.65.06"
    )
    assert driver.at_least("570.124.06", "570.26") and not driver.at_least("565.57.01", "570.26")
    assert driver.at_least("570.26", "570.26") and driver.at_least("1000.1", "999.99.99")
    assert driver.cuda_versions_from("12.8") == ["12.8", "12.9", "13.0"]
    with pytest.raises(driver.DriverError, match="no known driver floor"):
        driver.min_driver_for_cuda("11.8")


def _run(tmp_path: Path, proc_text: str | None, floor: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    if proc_text is not None:
        (tmp_path / "version").write_text(proc_text)
        env[driver.ENV_VERSION_FILE] = str(tmp_path / "version")
    if floor is not None:
        env[driver.ENV_MIN_DRIVER] = floor
    return subprocess.run([sys.executable, "-m", "qa_train", "run", "jobs/smoke.yaml", "--print_plan"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_container_stops_on_an_older_driver_with_one_line(tmp_path: Path) -> None:
    """``python -m qa_train run`` (the image's entrypoint) reads the driver where the real one is read and stops
    before any stage: one line naming the driver found and the one needed."""
    r = _run(tmp_path, PROC_PROPRIETARY, "570.26")
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: NVIDIA driver 535.104.05 is older than 570.26"), (
        r.stderr
    )


@pytest.mark.parametrize(
    ("proc_text", "floor"),
    [(PROC_OPEN, "570.26"), (None, None), ("", "570.26")],
    ids=["new-enough", "no-floor-declared", "no-nvidia-driver-cpu"],
)
def test_the_driver_check_lets_a_good_host_or_a_cpu_run_through(tmp_path: Path, proc_text, floor) -> None:
    r = _run(tmp_path, proc_text, floor)
    assert r.returncode == 0, r.stderr
    assert '"train"' in r.stdout or "train" in r.stdout


def test_a_malformed_floor_is_one_error_line(tmp_path: Path) -> None:
    r = _run(tmp_path, PROC_OPEN, "five-seventy")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "QA_MIN_DRIVER" in r.stderr


# -- the launcher: offers below the floor -----------------------------------------------------------------------
def test_vast_skips_and_names_offers_below_the_driver_floor() -> None:
    d = VastDouble(
        api_key="k",
        offers=[
            make_offer(1, "RTX A6000", 1, 0.30, cuda_max_good=12.2),  # driver 535: below a CUDA 12.8 image
            make_offer(
                2, "RTX A6000", 1, 0.35, cuda_max_good=12.8, driver_version="565.57.01"
            ),  # inconsistent host
            make_offer(3, "RTX A6000", 1, 0.40),  # 570.124.06 / 12.8
            make_offer(4, "RTX A6000", 1, 0.45, cuda_max_good=13.0),
        ],
    ).start()
    try:
        c = VastCompute("k", d.url, sleep=lambda s: None, backoff=0.0)
        offers = c.offers(OfferQuery(PROFILES["a6000"], 1, disk_gb=100, min_cuda="12.8"))
        assert [o.offer_id for o in offers] == ["3", "4"]
        assert offers[0].extra["driver_version"] == "570.124.06"
        assert len(c.skipped) == 2
        assert (
            "vast offer 1" in c.skipped[0] and "driver 535.104.05 (CUDA 12.2) is below 570.26" in c.skipped[0]
        )
        assert "vast offer 2" in c.skipped[1] and "565.57.01" in c.skipped[1]
        # a CUDA 13 image: only the 580 host
        offers = c.offers(OfferQuery(PROFILES["a6000"], 1, disk_gb=100, min_cuda="13.0"))
        assert [o.offer_id for o in offers] == ["4"] and len(c.skipped) == 3
    finally:
        d.stop()


def test_offers_shows_the_driver_and_names_the_skipped(tmp_path: Path) -> None:
    d = VastDouble(
        api_key="k",
        offers=[make_offer(1, "RTX A6000", 1, 0.30, cuda_max_good=12.2), make_offer(2, "RTX A6000", 1, 0.4)],
    ).start()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_"))
    }
    env.update(QA_RUNS_ROOT=str(tmp_path / "runs"), VAST_API_URL=d.url, VAST_API_KEY="k")
    try:
        p = subprocess.run([sys.executable, "launch/submit.py", "offers", "--gpu", "a6000", "--job",
                            "jobs/mistral-qa-lora.yaml", "--backend", "vast"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        d.stop()
    assert p.returncode == 0, p.stderr
    assert "driver" in p.stdout and "570.124.06" in p.stdout
    (skipped,) = [line for line in p.stdout.splitlines() if line.startswith("skipped:")]
    assert "vast offer 1" in skipped and "535.104.05" in skipped and "570.26" in skipped


def test_runpod_deploys_only_on_hosts_at_or_above_the_floor() -> None:
    d = RunpodDouble(
        api_key="rk",
        gpu_types=[make_gpu_type("NVIDIA RTX A6000", 0.40, host_cuda="12.4"),
                   make_gpu_type("NVIDIA A100 80GB PCIe", 1.2, memory_gb=80, host_cuda="12.9")],
    ).start()  # fmt: skip
    try:
        c = RunpodCompute("rk", f"{d.url}/graphql", sleep=lambda s: None, backoff=0.0)
        req = LaunchRequest(
            name="j", image="registry.example.com/qa/train:1", env={}, disk_gb=50, min_cuda="12.8"
        )
        (old,) = c.offers(OfferQuery(PROFILES["a6000"], 1, min_cuda="12.8"))
        assert (
            old.extra["allowedCudaVersions"] == ["12.8", "12.9", "13.0"]
            and old.extra["min_driver"] == "570.26"
        )
        with pytest.raises(NoCapacity):
            c.create(req, old)  # its hosts report CUDA 12.4: not in allowedCudaVersions
        (new,) = c.offers(OfferQuery(PROFILES["a100"], 1, min_cuda="12.8"))
        inst = c.create(req, new)
        (inp,) = [v["input"] for op, v in d.operations() if op == "podFindAndDeployOnDemand" and v["input"]["gpuTypeId"]
                  == new.offer_id]  # fmt: skip
        assert inp["allowedCudaVersions"] == ["12.8", "12.9", "13.0"] and "minCudaVersion" not in inp
        c.destroy(inst.instance_id)
    finally:
        d.stop()
