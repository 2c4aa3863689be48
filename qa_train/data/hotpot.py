"""``python -m qa_train convert-hotpot IN OUT``: HotpotQA records -> QA Expert training records.

Why: the real QA Expert training set is not available offline; HotpotQA (distractor setting) has the same shape —
a question answered from one or two supporting Wikipedia paragraphs — so converting it gives realistically sized
and structured training data. It is a stand-in, not the original dataset.

Mapping, per HotpotQA record ``{_id, question, answer, type, supporting_facts [[title, sent_idx]], context
[[title, [sentences]]]}``:

* one sub-question per supporting paragraph, in order of first appearance in ``supporting_facts``;
  its query is a template over the paragraph title (``--query-template``), its context the paragraph
  (``title + ". " + sentences``), its long answer the supporting sentences ("The provided knowledge mentions
  that ...\\nAnswer: ..."), the sub-answer the gold answer when the paragraph's supporting sentences contain it,
  else those sentences;
* ``multihop`` when there are two or more supporting paragraphs; ``final_answer`` ends with ``Answer: <gold>``;
* ``meta_info`` = ``{src: "hotpotqa", id, type, level}``.

Output is a JSON list, or JSONL when OUT ends with ``.jsonl``, written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qa_train.data.loading import read_json_records
from qa_train.data.records import RecordError, validate_record
from qa_train.fsutil import ArgumentParser, UsageError, atomic_write_lines, check_number, check_output

logger = logging.getLogger(__name__)

DEFAULT_QUERY_TEMPLATE = "What does the knowledge say about {title}?"


def _str_field(rec: dict, key: str, source: str, index: int) -> str:
    if key not in rec:
        raise RecordError(source, index, key, "missing")
    value = rec[key]
    if not isinstance(value, str) or not value.strip():
        raise RecordError(source, index, key, f"expected a non-empty string, got {value!r:.60}")
    return value.strip()


def parse_context(rec: dict, source: str, index: int) -> list[tuple[str, list[str]]]:
    """``context`` as ``[(title, [sentences]), …]`` in file order (shared with the HotpotQA evaluation)."""
    ctx = rec.get("context")
    if ctx is None:
        raise RecordError(source, index, "context", "missing")
    if not isinstance(ctx, list) or not ctx:
        raise RecordError(source, index, "context", "expected a non-empty list of [title, [sentences]]")
    out: list[tuple[str, list[str]]] = []
    for j, item in enumerate(ctx):
        ok = (
            isinstance(item, list | tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], list)
            and all(isinstance(s, str) for s in item[1])
        )
        if not ok:
            raise RecordError(source, index, f"context[{j}]", "expected [title, [sentences]]")
        out.append((item[0], list(item[1])))
    return out


def _context(rec: dict, source: str, index: int) -> dict[str, list[str]]:
    paragraphs: dict[str, list[str]] = {}
    for title, sentences in parse_context(rec, source, index):
        paragraphs.setdefault(title, sentences)  # a repeated title keeps its first paragraph
    return paragraphs


def _supporting(rec: dict, paragraphs: dict[str, list[str]], source: str, index: int) -> dict[str, list[int]]:
    """Supporting sentence indices per title, titles in order of first appearance."""
    facts = rec.get("supporting_facts")
    if facts is None:
        raise RecordError(source, index, "supporting_facts", "missing")
    if not isinstance(facts, list) or not facts:
        raise RecordError(source, index, "supporting_facts", "expected a non-empty list of [title, sent_idx]")
    by_title: dict[str, list[int]] = {}
    for j, fact in enumerate(facts):
        field = f"supporting_facts[{j}]"
        ok = (
            isinstance(fact, list | tuple)
            and len(fact) == 2
            and isinstance(fact[0], str)
            and isinstance(fact[1], int)
            and not isinstance(fact[1], bool)
        )
        if not ok:
            raise RecordError(source, index, field, f"expected [title, sent_idx], got {fact!r:.80}")
        title, sent = fact
        if title not in paragraphs:
            raise RecordError(source, index, field, f"title {title!r} is not in context")
        if not 0 <= sent < len(paragraphs[title]):
            raise RecordError(
                source, index, field, f"sentence {sent} out of range ({title!r} has {len(paragraphs[title])})"
            )
        sents = by_title.setdefault(title, [])
        if sent not in sents:
            sents.append(sent)
    return by_title


def _join(sentences: list[str]) -> str:
    """HotpotQA sentences carry their own leading spaces; joining with '' restores the paragraph."""
    return " ".join("".join(sentences).split())


def convert_record(
    rec: Any, source: str, index: int, query_template: str = DEFAULT_QUERY_TEMPLATE
) -> dict[str, Any]:
    """One HotpotQA record -> one QA Expert record (validated); RecordError names file, record and field."""
    if not isinstance(rec, dict):
        raise RecordError(source, index, "<record>", f"expected an object, got {type(rec).__name__}")
    question = _str_field(rec, "question", source, index)
    gold = _str_field(rec, "answer", source, index)
    paragraphs = _context(rec, source, index)
    support = _supporting(rec, paragraphs, source, index)

    subs = []
    for title, sent_ids in support.items():
        evidence = _join([paragraphs[title][k] for k in sorted(sent_ids)])
        answer = gold if gold.lower() in evidence.lower() else evidence
        subs.append(
            {
                "question": query_template.format(title=title),
                "answer": answer,
                "paragraph": f"{title}. {_join(paragraphs[title])}".strip(),
                "long_answer": f'The provided knowledge mentions that "{evidence}"\nAnswer: {answer}',
            }
        )
    out = {
        "question": question,
        "answer": gold,
        "multihop": len(subs) >= 2,
        "sub_questions": subs,
        "final_answer": f'Based on the provided knowledge, the answer to "{question}" is {gold}.\nAnswer: {gold}',
        "meta_info": {
            "src": "hotpotqa",
            "id": rec.get("_id"),
            "type": rec.get("type"),
            "level": rec.get("level"),
        },
    }
    return validate_record(out, source, index)


def convert(
    records: list[Any], source: str, skip_invalid: bool = False, query_template: str = DEFAULT_QUERY_TEMPLATE
) -> tuple[list[dict[str, Any]], int]:
    """Convert all records; returns (converted, skipped). Without ``skip_invalid`` the first bad record raises."""
    from tqdm.auto import tqdm

    out, skipped = [], 0
    for i, rec in enumerate(tqdm(records, desc="convert-hotpot", unit="rec", disable=None)):
        try:
            out.append(convert_record(rec, source, i, query_template))
        except RecordError as e:
            if not skip_invalid:
                raise
            skipped += 1
            logger.warning("skipping %s", e)
    return out, skipped


def _lines(records: list[dict], jsonl: bool) -> Iterator[str]:
    if jsonl:
        for r in records:
            yield json.dumps(r, ensure_ascii=False) + "\n"
    else:
        yield json.dumps(records, ensure_ascii=False, indent=1) + "\n"


def write_atomic(records: list[dict], out: Path) -> None:
    """Write next to OUT and rename, so a crash never leaves a truncated file that looks finished."""
    atomic_write_lines(out, _lines(records, out.suffix == ".jsonl"))


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m qa_train convert-hotpot",
        description="Convert HotpotQA records (JSON list or JSONL) into QA Expert training records.",
        allow_abbrev=False,
    )
    p.add_argument("input", type=Path, help="HotpotQA file, e.g. hotpot_train_v1.1.json")
    p.add_argument("output", type=Path, help="output file; .jsonl -> one record per line, else a JSON list")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N records")
    p.add_argument(
        "--skip-invalid", action="store_true", help="skip malformed records (counted) instead of failing"
    )
    p.add_argument(
        "--query-template", default=DEFAULT_QUERY_TEMPLATE, help="sub-question query; {title} is filled"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0; 2 with one ``error:`` line for bad flags or input records; 1 when the output cannot be written."""
    try:
        args = _parser().parse_args(argv)
        if args.limit is not None:
            check_number("--limit", args.limit, args.limit >= 1, ">= 1")
        if "{title}" not in args.query_template:
            raise UsageError("--query-template must contain {title}")
        check_output(args.output, "OUT", {"IN": args.input}, kind="file")
        records = read_json_records(args.input)
        if not isinstance(records, list):
            raise UsageError(f"{args.input}: expected a JSON list of records, got {type(records).__name__}")
        if args.limit is not None:
            records = records[: args.limit]
        converted, skipped = convert(records, str(args.input), args.skip_invalid, args.query_template)
        if not converted:
            raise UsageError(
                f"{args.input}: no records to write" + (f" ({skipped} skipped)" if skipped else "")
            )
    except UsageError as e:  # RecordError and DataError are UsageErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        write_atomic(converted, args.output)
    except OSError as e:
        print(f"error: {args.output}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    summary = {
        "input": str(args.input),
        "output": str(args.output),
        "records": len(converted),
        "multihop": sum(r["multihop"] for r in converted),
        "skipped": skipped,
    }
    print(
        f"converted {summary['records']} HotpotQA records ({summary['multihop']} multi-hop, {skipped} skipped) "
        f"-> {args.output}"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
