"""The launcher commands a stage runs: ``python -m qa_train``, deepspeed, torchrun, and the eval interpreter.

Kept apart from the stage builders so a change of launcher (or of the image's venv layout) is one small edit.
"""

from __future__ import annotations

import os
import shutil
import sys


def qa_train_cmd(*args: str, python: str | None = None) -> list[str]:
    """``python -m qa_train ARGS…`` with this interpreter (or ``python``): every stage runs a subcommand."""
    return [python or sys.executable, "-m", "qa_train", *args]


def deepspeed_cmd(num_gpus: int) -> list[str]:
    """The deepspeed launcher (its console script, else its module) running ``qa_train train``."""
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(max(num_gpus, 1)), "--module", "qa_train", "train"]


def torchrun_cmd(num_gpus: int) -> list[str]:
    """One node, ``num_gpus`` ranks (torchrun's standalone rendezvous picks a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_gpus),
            "-m", "qa_train", "train"]  # fmt: skip


# The GPU image's eval venv: vLLM pins its own torch, so it lives beside the training venv (docker/README.md).
EVAL_VENV_PYTHON = "/opt/eval-venv/bin/python"


def eval_python(inference_type: str) -> str:
    """The interpreter for the eval stage: with ``vllm``, ``$QA_EVAL_PYTHON`` or the image's eval venv when it
    exists; otherwise (and always for ``hf``) this interpreter, so a CPU run with ``vllm`` still gets the
    backend's clear "needs a GPU/vllm" error."""
    if inference_type == "vllm":
        for cand in (os.environ.get("QA_EVAL_PYTHON"), EVAL_VENV_PYTHON):
            if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return sys.executable
