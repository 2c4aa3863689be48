"""Turn one generated assistant turn back into a ``Message`` (the inverse of ``prompt.render_message``).

Strict on purpose: a function call that does not parse is an error for that question (recorded by the agent
loop), never silently treated as a final answer.
"""

from __future__ import annotations

import re

from qa_train.data.prompt import BOF, EOF, EOT, FUNCTION_NAME, FunctionCall, Message

_SUMMARY = re.compile(r"(?:^|\n)\s*Summary:(?P<summary>.*?)\nAnswer:(?P<answer>.*)\Z", re.DOTALL)


class MalformedCallError(ValueError):
    """The model started a function call that cannot be executed."""


def strip_turn_end(text: str) -> str:
    """Drop a trailing ``<|eot|>`` (and anything after it) that a backend may have kept."""
    idx = text.find(EOT)
    return text if idx < 0 else text[:idx]


def parse_generation(text: str) -> Message:
    """``[thought\\n]<|bof|>retrieve:\\n{"query": …}<|eof|>`` → assistant message with a call; else plain answer."""
    text = strip_turn_end(text)
    start = text.find(BOF)
    if start < 0:
        if EOF in text:
            raise MalformedCallError(f"{EOF} without {BOF} in generation: {text!r}")
        return Message("assistant", text.strip())
    end = text.find(EOF, start)
    if end < 0:
        raise MalformedCallError(f"function call not closed with {EOF}: {text[start:]!r}")
    body = text[start + len(BOF) : end].strip()
    name, sep, arguments = body.partition(":")
    name = name.strip()
    if not sep or name != FUNCTION_NAME:
        raise MalformedCallError(f"unknown function {name!r} (expected {FUNCTION_NAME!r}): {body!r}")
    call = FunctionCall(FUNCTION_NAME, arguments.strip())
    try:
        call.query()
    except ValueError as exc:
        raise MalformedCallError(str(exc)) from exc
    content = text[:start].strip()
    return Message("assistant", content or None, call)


def parse_final_answer(text: str) -> tuple[str | None, str | None, str]:
    """(answer to the last sub-question, summary, final answer) from ``…\\nSummary: …\\nAnswer: …``.

    Multi-hop answers carry a summary; single-hop answers do not, and the whole text is the answer.
    """
    text = strip_turn_end(text)
    match = _SUMMARY.search(text)
    if match is None:
        return None, None, text.strip()
    last = text[: match.start()].strip() or None
    return last, match.group("summary").strip(), match.group("answer").strip()
