"""Secrets (cloud keys, S3 credentials, HF token, registry and tracking credentials): read from env or files,
handed to the instance only as env, refused when their value has a control character, and redacted as ``***``
anywhere they could be printed or saved (log lines, errors, registry rows and events, ``spec.json``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qa_train.secret_check import SecretValueError, check_secret_value

# Passed into the container when set. Cloud API keys are used by the launcher only and never forwarded.
# Experiment trackers (the job spec's training.report_to): their keys reach the trainer the same way. The
# tracking URI travels with them (it may carry a user:password) and, like every value here, never in the spec.
TRACKING_SECRETS = (
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
CONTAINER_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    *TRACKING_SECRETS,
)
LAUNCHER_SECRETS = ("VAST_API_KEY", "RUNPOD_API_KEY")
# Every credential the launcher or the container may meet: checked up front, and redacted (but usernames are
# not secret and look like ordinary words, e.g. an image namespace, so they are checked, never redacted).
OTHER_SECRETS = ("REGISTRY_PASSWORD",)
USERNAMES = ("REGISTRY_USERNAME", "MLFLOW_TRACKING_USERNAME")
ALL_SECRETS = tuple(n for n in CONTAINER_SECRETS if n not in USERNAMES) + LAUNCHER_SECRETS + OTHER_SECRETS
CHECKED = ALL_SECRETS + USERNAMES
REDACTED = "***"
MIN_SECRET_LEN = 8  # shorter values are not secrets worth the name, and replacing them mangles ordinary text
_LITERALS = frozenset({"true", "false", "null", "none", "yes", "no", "on", "off"})

# Values seen by load_secrets / check_environment: what the log filter and the registry redact by default.
_KNOWN: set[str] = set()


class SecretError(SecretValueError):
    """A secret that cannot be read or used; the message names the variable or file, never the value."""


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional matching quotes around the value)."""
    out: dict[str, str] = {}
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SecretError(f"{p}: cannot read secrets file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SecretError(f"{p}: secrets file is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[len("export ") :]
        if "=" not in s:
            raise SecretError(f"{p}:{n}: expected KEY=VALUE")
        k, v = s.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def _read_secret_file(name: str, ref: str) -> str:
    """A ``NAME_FILE`` file's content less exactly one trailing newline (what ``echo`` adds)."""
    try:
        text = Path(ref).read_text(encoding="utf-8")
    except OSError as e:
        raise SecretError(f"{name}_FILE={ref}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SecretError(f"{name}_FILE={ref}: not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def _checked(name: str, value: str, source: str) -> str:
    try:
        check_secret_value(name, value, source)
    except SecretValueError as e:
        raise SecretError(str(e)) from None
    if name not in USERNAMES:
        remember(value)
    return value


def load_secrets(
    names: tuple[str, ...] = CONTAINER_SECRETS,
    env: Mapping[str, str] | None = None,
    env_file: str | Path | None = None,
) -> dict[str, str]:
    """Values for ``names`` from (lowest first) an env file, ``NAME_FILE`` files, then the environment.

    Every value found is checked (no newline or other control character) wherever it came from, even one
    that a later source overrides: a broken key in a file is a mistake worth hearing about now."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    file_vals = read_env_file(env_file) if env_file else {}
    for name in names:
        if name in file_vals:
            found[name] = _checked(name, file_vals[name], f"{name} in {env_file}")
        ref = env.get(f"{name}_FILE")
        if ref:
            found[name] = _checked(name, _read_secret_file(name, ref), f"the file {name}_FILE={ref}")
        if env.get(name):
            found[name] = _checked(name, env[name], f"the environment variable {name}")
    return {k: v for k, v in found.items() if v}


def check_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Check every credential the environment holds (``NAME`` or ``NAME_FILE``) before any command runs, and
    remember the values for redaction. Raises ``SecretError`` naming the first bad one."""
    return load_secrets(CHECKED, env=env)


def remember(value: str) -> None:
    """Add a value to the ones redacted everywhere by default (log lines, registry)."""
    if is_redactable(value):
        _KNOWN.add(value)


def known_values() -> list[str]:
    return sorted(_KNOWN)


def is_redactable(value: str) -> bool:
    """Whether ``value`` is worth redacting: long enough and not a literal that ordinary text is full of."""
    v = value.strip()
    if len(v) < MIN_SECRET_LEN or v.lower() in _LITERALS:
        return False
    try:
        float(v)
    except ValueError:
        return True
    return False  # a number: replacing it would corrupt numbers in JSON and logs


_T = TypeVar("_T")


def _forms(values: Iterable[str]) -> list[str]:
    """Each redactable value, and its JSON-escaped form when different, longest first (overlaps vanish)."""
    out: set[str] = set()
    for v in values:
        if v and is_redactable(v):
            out.add(v)
            out.add(json.dumps(v)[1:-1])
    return sorted(out, key=len, reverse=True)


def _replace(text: str, forms: list[str]) -> str:
    for f in forms:
        text = text.replace(f, REDACTED)
    return text


def _walk(obj: Any, forms: list[str]) -> Any:
    if isinstance(obj, str):
        return _replace(obj, forms)
    if isinstance(obj, dict):
        return {_walk(k, forms): _walk(v, forms) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, forms) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, forms) for v in obj)
    return obj  # numbers, booleans, None: never secrets, never touched


def _redact_json_text(text: str, forms: list[str]) -> str | None:
    """Redact inside the string literals of a JSON document, keeping its layout; ``None`` if not JSON."""
    s = text.lstrip()
    if not s.startswith(("{", "[")):
        return None
    try:
        json.loads(text)
    except ValueError:
        return None
    import re

    def one(m: re.Match[str]) -> str:
        decoded = json.loads(m.group())
        red = _replace(decoded, [f for f in forms if f in decoded])
        return m.group() if red == decoded else json.dumps(red, ensure_ascii=False)

    # in valid JSON a '"' outside a string starts one, so this scan sees exactly the string literals
    return re.sub(r'"(?:[^"\\]|\\.)*"', one, text)


def redact(data: _T, values: Mapping[str, str] | Iterable[str] | None = None) -> _T:
    """``data`` with every secret value replaced by ``***``: the given ``values`` plus every value seen by
    ``load_secrets``. Works on values: a dict/list is redacted inside its strings only; a string that is a JSON
    document stays valid JSON (only its string literals change); other text is replaced as is. Short values
    (< 8 characters), numbers and literals like ``true`` are never treated as secrets."""
    given = list(values.values()) if isinstance(values, Mapping) else list(values or ())
    forms = _forms([*given, *_KNOWN])
    if not forms:
        return data
    if isinstance(data, str):
        if not any(f in data for f in forms):
            return data
        as_json = _redact_json_text(data, forms)
        return as_json if as_json is not None else _replace(data, forms)  # type: ignore[return-value]
    return _walk(data, forms)


class RedactingFilter(logging.Filter):
    """Redacts known secret values from a log record's message, arguments and traceback, so that a retry
    warning or an exception from any module cannot print a key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _KNOWN:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to the formatter's own error path
            return True
        red = redact(msg)
        if red != msg:
            record.msg, record.args = red, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put a ``RedactingFilter`` on every handler of ``logger`` (default: the root logger); idempotent."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
