"""The one rule for secret values (API keys, S3 keys and tokens, passwords), shared by the launcher and the
container: no control characters. A trailing newline from ``echo key > file`` or a CRLF from an editor ends up
in an HTTP header, where the client rejects it and echoes the header, value included, into an error message.
So such a value is refused up front, by name, and its value is never printed. Standard library only.
"""

from __future__ import annotations

import unicodedata


class SecretValueError(ValueError):
    """A secret's value cannot be used; the message names the variable, never the value."""


def secret_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a secret (``None`` when nothing is)."""
    if "\n" in value:
        return "contains a newline"
    if "\r" in value:
        return "contains a carriage return"
    for ch in value:
        if unicodedata.category(ch) == "Cc":  # C0 controls (tab, NUL, ESC …), DEL and C1 controls
            return f"contains a control character (U+{ord(ch):04X})"
    return None


def check_secret_value(name: str, value: str, source: str | None = None) -> None:
    """Raise ``SecretValueError`` naming ``name`` (and where it came from) when ``value`` is unusable."""
    problem = secret_problem(value)
    if problem is not None:
        raise SecretValueError(f"{name} {problem} (check {source or 'the file/variable it came from'})")
