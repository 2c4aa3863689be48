"""The QA Expert chat format: messages -> prompt text, byte-for-byte as the original project.

Training and inference must render identically, so both import this module. The renderer also returns the
character spans that carry loss (assistant content and its ``<|eot|>``), so labels are derived from tokenizer
offsets instead of searching for token subsequences (which breaks with tokenizers that merge across ``\\n``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

BOF = "<|bof|>"
EOF = "<|eof|>"
EOT = "<|eot|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOF, EOF, EOT)
FUNCTION_NAME = "retrieve"

SYSTEM_MESSAGE = (
    "This is a conversation between user and an artificial intelligence assistant. "
    "User will ask question and the assistant will use the function: `retrieve` "
    "to retrieve the most relevant context to answer the question. "
    "For complex question, assistant might need to use the function `retrieve` multiple times.\n"
    "`retrieve`: this function is useful for retrieving the most relevant information given a query. "
    "The only parameter of this function is: query(str): the query for retrieving relevant content.\n"
)

Role = Literal["system", "user", "assistant", "function"]


@dataclass(frozen=True)
class FunctionCall:
    name: str = FUNCTION_NAME
    arguments: str = "{}"

    @classmethod
    def retrieve(cls, query: str) -> FunctionCall:
        return cls(FUNCTION_NAME, json.dumps({"query": query}, ensure_ascii=False))

    def query(self) -> str:
        """The ``query`` argument; raises ValueError when the arguments are not a JSON object with one."""
        try:
            args = json.loads(self.arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(f"function call arguments are not JSON: {self.arguments!r}") from exc
        if not isinstance(args, dict) or not isinstance(args.get("query"), str):
            raise ValueError(f"function call arguments have no string 'query': {self.arguments!r}")
        return args["query"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str | None = None
    function_call: FunctionCall | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.function_call is not None:
            out["function_call"] = {
                "name": self.function_call.name,
                "arguments": self.function_call.arguments,
            }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        fc = d.get("function_call")
        return cls(d["role"], d.get("content"), FunctionCall(fc["name"], fc["arguments"]) if fc else None)


def _assistant_body(msg: Message) -> str:
    if msg.function_call is None:
        return f"{msg.content}"
    call = f"{BOF}{msg.function_call.name}:\n{msg.function_call.arguments}{EOF}"
    return call if msg.content is None else f"{msg.content}\n{call}"


def render_message(msg: Message) -> str:
    """One turn, ending in ``<|eot|>\\n``."""
    if msg.role == "system":
        return f"system: {msg.content}{EOT}\n"
    if msg.role == "user":
        return f"user: {msg.content}{EOT}\n"
    if msg.role == "function":
        return f"retrieved context: {msg.content}{EOT}\n"
    if msg.role == "assistant":
        return f"assistant: {_assistant_body(msg)}{EOT}\n"
    raise ValueError(f"unknown role {msg.role!r}")


@dataclass
class RenderedPrompt:
    text: str
    # [start, end) character spans that carry loss: assistant body + its <|eot|>
    loss_spans: list[tuple[int, int]] = field(default_factory=list)


def render(messages: list[Message], add_generation_prompt: bool = False) -> RenderedPrompt:
    """System message + turns; with ``add_generation_prompt`` the text ends in ``assistant:`` for generation."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for msg in [Message("system", SYSTEM_MESSAGE), *messages]:
        piece = render_message(msg)
        if msg.role == "assistant":
            start = pos + len("assistant:")  # the space before the body is learned too, as in the original
            end = pos + len(piece) - 1  # keep <|eot|>, drop the trailing newline
            spans.append((start, end))
        parts.append(piece)
        pos += len(piece)
    if add_generation_prompt:
        parts.append("assistant:")
    return RenderedPrompt("".join(parts), spans)


def render_prompt(messages: list[Message], add_generation_prompt: bool = False) -> str:
    return render(messages, add_generation_prompt).text
