"""QA Expert training records: validation and conversion to chat messages.

A record is ``{question, multihop, sub_questions: [{question, answer, paragraph, long_answer}], final_answer}``.
Multi-hop records become one ``retrieve`` call per sub-question, each call carrying the previous
sub-answer as its thought; single-hop records retrieve with the question itself (as the original).
"""

from __future__ import annotations

from typing import Any

from qa_train.data.prompt import FunctionCall, Message
from qa_train.fsutil import UsageError


class RecordError(UsageError):
    """A malformed record; the message names the source, the record index and the field."""

    def __init__(self, source: str, index: int, field: str, problem: str) -> None:
        self.source, self.index, self.field, self.problem = source, index, field, problem
        super().__init__(f"{source}: record {index}: field '{field}': {problem}")


def _require_str(rec: dict[str, Any], key: str, where: str, source: str, index: int) -> str:
    if key not in rec:
        raise RecordError(source, index, where + key, "missing")
    value = rec[key]
    if not isinstance(value, str) or not value.strip():
        raise RecordError(
            source, index, where + key, f"expected a non-empty string, got {type(value).__name__}"
        )
    return value


def validate_record(rec: Any, source: str, index: int) -> dict[str, Any]:
    """Check the fields training needs; returns the record unchanged or raises RecordError."""
    if not isinstance(rec, dict):
        raise RecordError(source, index, "<record>", f"expected an object, got {type(rec).__name__}")
    _require_str(rec, "question", "", source, index)
    _require_str(rec, "final_answer", "", source, index)
    subs = rec.get("sub_questions")
    if subs is None:
        raise RecordError(source, index, "sub_questions", "missing")
    if not isinstance(subs, list) or not subs:
        raise RecordError(source, index, "sub_questions", "expected a non-empty list")
    for j, sub in enumerate(subs):
        where = f"sub_questions[{j}]."
        if not isinstance(sub, dict):
            raise RecordError(source, index, f"sub_questions[{j}]", "expected an object")
        _require_str(sub, "question", where, source, index)
        _require_str(sub, "paragraph", where, source, index)
        if len(subs) > 1:
            _require_str(sub, "long_answer", where, source, index)
    if "multihop" in rec and not isinstance(rec["multihop"], bool):
        raise RecordError(source, index, "multihop", "expected true or false")
    return rec


def record_to_messages(rec: dict[str, Any]) -> list[Message]:
    """The conversation the model learns: user question, retrieve calls with contexts, final answer."""
    subs = rec["sub_questions"]
    msgs: list[Message] = [Message("user", rec["question"])]
    if len(subs) > 1:
        thought: str | None = None
        for sub in subs:
            msgs.append(Message("assistant", thought, FunctionCall.retrieve(sub["question"])))
            msgs.append(Message("function", sub["paragraph"]))
            thought = sub["long_answer"].strip()
        msgs.append(Message("assistant", f"{thought}\nSummary: {rec['final_answer'].strip()}"))
    else:
        msgs.append(Message("assistant", None, FunctionCall.retrieve(rec["question"])))
        msgs.append(Message("function", subs[0]["paragraph"]))
        msgs.append(Message("assistant", rec["final_answer"]))
    return msgs
