"""``python -m qa_train eval``: HotpotQA dev evaluation with the batched multi-hop agent loop.

Writes a per-question JSONL and ``<save_path stem>.summary.json`` next to it, both atomically (temp file +
rename), so an aborted run never leaves files that look finished; prints a table; optionally uploads both to
object storage under ``eval/``. A local ``--model_path`` must carry the completion marker its producer (train's
full-model save or merge) writes last, so a cut-off save is refused instead of evaluated.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_train.data.records import RecordError
from qa_train.evaluate.metrics import compute_containing_acc, compute_recall
from qa_train.fsutil import (
    ArgumentParser,
    UsageError,
    atomic_write_text,
    check_number,
    check_output,
    read_marker,
    require_marker,
)

logger = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "recall",
    "containing_acc",
    "multi_hop_rate",
    "avg_hops",
    "num_errors",
    "num_questions",
    "questions_per_second",
)


class EvalInputError(UsageError):
    """Unusable evaluation input; the message names the file (and record/field)."""


class SyncUnavailable(RuntimeError):
    """``--sync_to`` was given but the sync package cannot upload."""


def _upload_directory() -> Any:
    """``qa_train.sync.upload_directory``, imported lazily so plain local runs never need boto3."""
    try:
        from qa_train.sync import upload_directory
    except ImportError as exc:
        raise SyncUnavailable(f"--sync_to needs qa_train.sync.upload_directory ({exc})") from exc
    return upload_directory


@dataclass
class HotpotExample:
    id: str
    question: str
    answer: str
    context: list[tuple[str, list[str]]]


def _field_error(path: Path, index: int, rec: Any, field: str, problem: str) -> RecordError:
    rid = rec.get("_id") if isinstance(rec, dict) else None
    source = f"{path}" + (f" (_id={rid})" if rid is not None else "")
    return RecordError(source, index, field, problem)


def validate_hotpot_record(rec: Any, path: Path, index: int) -> HotpotExample:
    """question/answer strings and ``context`` as ``[[title, [sentence, …]], …]`` (at least one paragraph)."""
    if not isinstance(rec, dict):
        raise _field_error(path, index, rec, "<record>", f"expected an object, got {type(rec).__name__}")
    for key in ("question", "answer"):
        if key not in rec:
            raise _field_error(path, index, rec, key, "missing")
        if not isinstance(rec[key], str):
            raise _field_error(path, index, rec, key, f"expected a string, got {type(rec[key]).__name__}")
    if not rec["question"].strip():
        raise _field_error(path, index, rec, "question", "empty")
    from qa_train.data.hotpot import parse_context

    rid = rec.get("_id")
    parsed = parse_context(rec, f"{path}" + (f" (_id={rid})" if rid is not None else ""), index)
    return HotpotExample(str(rec.get("_id", index)), rec["question"], rec["answer"], parsed)


def load_hotpot(path: str | Path, limit: int | None = None) -> list[HotpotExample]:
    """HotpotQA dev JSON (a list) or JSONL; every record is validated before any model is loaded."""
    from qa_train.data.loading import DataError, read_json_records

    path = Path(path)
    try:
        data = read_json_records(path)
    except DataError as exc:
        raise EvalInputError(str(exc)) from exc
    if not isinstance(data, list):
        raise EvalInputError(f"{path}: expected a JSON list of HotpotQA records, got {type(data).__name__}")
    if not data:
        raise EvalInputError(f"{path}: no records")
    if limit is not None:
        data = data[:limit]
    return [validate_hotpot_record(rec, path, i) for i, rec in enumerate(data)]


def summarize(rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """The summary keys from per-question rows (means over all questions; errors count as wrong)."""
    n = len(rows)

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / n if n else 0.0

    return {
        "recall": mean("recall"),
        "containing_acc": mean("containing"),
        "multi_hop_rate": mean("multi_hop"),
        "avg_hops": mean("hops"),
        "num_errors": sum(1 for r in rows if r["error"]),
        "num_questions": n,
        "questions_per_second": n / elapsed_s if elapsed_s > 0 else 0.0,
    }


def summary_path_for(save_path: Path) -> Path:
    return save_path.with_name(save_path.stem + ".summary.json")


def format_table(summary: dict[str, Any]) -> str:
    width = max(len(k) for k in summary)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for key in SUMMARY_KEYS:
        value = summary[key]
        lines.append(
            f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}"
        )
    return "\n".join(lines)


def upload_summaries(sync_to: str, run_name: str, files: list[Path], endpoint_url: str | None) -> None:
    """Upload the outputs to ``<sync_to>/<run_name>/eval/`` via the sync package (imported only when asked)."""
    upload_directory = _upload_directory()
    with tempfile.TemporaryDirectory(prefix="qa-eval-sync-") as staging:
        for f in files:
            shutil.copy2(f, Path(staging) / f.name)
        upload_directory(sync_to, run_name, "eval", staging, endpoint_url=endpoint_url)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m qa_train eval", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.add_argument(
        "--model_path",
        required=True,
        help="model folder written by merge or a full train (or a Hub model id)",
    )
    p.add_argument("--hotpot_qa_dev_path", required=True, help="HotpotQA dev distractor JSON (list) or JSONL")
    p.add_argument("--inference_type", default="hf", choices=("hf", "vllm"))
    p.add_argument("--save_path", required=True, help="per-question JSONL; the summary goes next to it")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--batch_size", type=int, default=32, help="prompts per backend call in each round")
    p.add_argument("--max_hops", type=int, default=5, help="retrieve calls allowed per question")
    p.add_argument("--retriever", default="bm25", choices=("bm25", "e5"))
    p.add_argument("--e5_model", default="intfloat/e5-base-v2", help="sentence-transformers model for e5")
    p.add_argument("--num_paragraphs", type=int, default=1, help="paragraphs returned per retrieve call")
    p.add_argument(
        "--paragraph_style",
        default="title_first",
        choices=("title_first", "original"),
        help="title_first: 'Title. sentences' as in training data; original: the original eval script's text",
    )
    p.add_argument("--max_new_tokens", type=int, default=512, help="tokens generated per assistant turn")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument("--sync_to", default=None, help="s3://bucket/prefix: also upload the outputs under eval/")
    p.add_argument("--run_name", default=None, help="run folder under --sync_to (default: model folder name)")
    p.add_argument("--s3_endpoint_url", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    p.add_argument("--no_progress", action="store_true", help="disable the progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Numbers and output paths, before anything is read or written: every problem names its flag."""
    for name in ("batch_size", "max_new_tokens", "num_paragraphs", "max_hops"):
        check_number(f"--{name}", getattr(args, name), getattr(args, name) >= 1, ">= 1")
    if args.limit is not None:
        check_number("--limit", args.limit, args.limit >= 1, ">= 1")
    inputs = {"--hotpot_qa_dev_path": args.hotpot_qa_dev_path, "--model_path": args.model_path}
    save_path = Path(args.save_path)
    check_output(save_path, "--save_path", inputs, kind="file")
    check_output(summary_path_for(save_path), "--save_path (its summary file)", inputs, kind="file")


# What `train` leaves in an output_dir (besides the model): a folder holding any of these was produced here,
# so it must carry the completion marker. A folder with none of them is someone else's model (a downloaded
# base for a baseline eval, or what `run` fetched) and is taken as it is; merge output is published whole,
# so it is never seen half-written.
TRAIN_OUTPUT_SIGNS = ("trainer_state.json", "training_args.bin", "train_summary.json", "adapter_config.json")


def _made_by_train(folder: Path) -> bool:
    if any((folder / name).exists() for name in TRAIN_OUTPUT_SIGNS):
        return True
    return any(folder.glob("checkpoint-*")) or any(folder.glob(".final.tmp-*"))


def check_model(model_path: str) -> None:
    """A qa_train output folder must be a finished save (marker), else its save was cut off; a missing path is
    named here instead of being sent to the Hub client."""
    from qa_train.modeling import check_model_path

    if check_model_path(model_path, "--model_path") != "local":
        return
    folder = Path(model_path).expanduser()
    if read_marker(folder) is None and _made_by_train(folder):
        require_marker(folder, "--model_path", "`python -m qa_train merge` or a full `train`")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by parsed ``args``; returns the summary (also written to disk)."""
    from tqdm.auto import tqdm

    from qa_train.inference.agent import AgentStats, run_agent
    from qa_train.inference.backends import make_backend
    from qa_train.retrieval import make_retriever_factory, paragraphs_from_context

    check_args(args)
    if args.sync_to:
        _upload_directory()  # fail before hours of generation, not after
    save_path = Path(args.save_path)
    summary_path = summary_path_for(save_path)
    summary_path.unlink(missing_ok=True)  # a stale summary must not vouch for this run's outputs
    examples = load_hotpot(args.hotpot_qa_dev_path, args.limit)
    logger.info("Loaded %d questions from %s", len(examples), args.hotpot_qa_dev_path)
    check_model(args.model_path)
    factory = make_retriever_factory(args.retriever, args.num_paragraphs, args.e5_model)
    retrievers = [factory(paragraphs_from_context(ex.context, args.paragraph_style)) for ex in examples]
    backend = make_backend(args.inference_type, args.model_path, args.max_new_tokens, args.dtype)

    stats = AgentStats()
    start = time.perf_counter()
    with tqdm(total=len(examples), desc="eval", unit="q", disable=args.no_progress) as bar:
        results = run_agent(
            [ex.question for ex in examples],
            retrievers,
            backend,
            batch_size=args.batch_size,
            max_hops=args.max_hops,
            on_finished=bar.update,
            stats=stats,
        )
    elapsed = time.perf_counter() - start

    rows = []
    for ex, res in zip(examples, results, strict=True):
        row = {"id": ex.id, "gold": ex.answer, **res.to_dict()}
        row["recall"] = compute_recall(res.prediction, ex.answer)
        row["containing"] = compute_containing_acc(res.prediction, ex.answer)
        rows.append(row)
    summary = summarize(rows, elapsed)
    summary.update(
        {
            "elapsed_s": elapsed,
            "rounds": stats.rounds,
            "backend_calls": stats.backend_calls,
            "model_path": str(args.model_path),
            "hotpot_qa_dev_path": str(args.hotpot_qa_dev_path),
            "inference_type": args.inference_type,
            "batch_size": args.batch_size,
            "max_hops": args.max_hops,
            "retriever": args.retriever,
            "num_paragraphs": args.num_paragraphs,
            "paragraph_style": args.paragraph_style,
            "max_new_tokens": args.max_new_tokens,
        }
    )
    atomic_write_text(save_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
    if args.sync_to:
        run_name = args.run_name or Path(args.model_path).name
        upload_summaries(args.sync_to, run_name, [save_path, summary_path], args.s3_endpoint_url)
        logger.info("Uploaded eval outputs to %s/%s/eval/", args.sync_to.rstrip("/"), run_name)
    return summary


def main(argv: list[str] | None = None) -> int:
    from qa_train.inference.backends import BackendUnavailable
    from qa_train.logs import SHORT_FORMAT, setup_logging
    from qa_train.retrieval import RetrieverUnavailable

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    try:
        evaluate(build_parser().parse_args(argv))
    except (UsageError, BackendUnavailable, RetrieverUnavailable, SyncUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
