"""Strict Fire: the launcher's command line checked against the chosen command's signature before Fire runs.

Fire calls a function with the flags it recognises and complains about the rest only afterwards, so a typo such
as ``--dryrun`` used to submit (and pay for) a real job. ``parse`` refuses an unknown command or flag (with a
did-you-mean), a missing or extra argument, and a value of the wrong type, then hands Fire an argv in which
every value is spelled so that Fire cannot reinterpret it (``--dry_run=False``, ``--job_id='007'``).

Fire's conventions stay valid: ``--flag value``, ``--flag=value``, ``--flag`` for True, ``--noflag`` for False,
``--dry-run`` and ``--dry_run``, and positional arguments in signature order.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HELP_FLAGS = ("-h", "--help")
FIRE_FLAGS = ("--help", "-h", "--trace", "-t", "--verbose", "-v")  # accepted after a lone `--`
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")

# Lower bounds of numeric parameters (any command that has them); (bound, inclusive).
MINIMUM: dict[str, tuple[float, bool]] = {
    "num_gpus": (1, True),
    "max_price": (0, False),
    "poll_s": (0, True),
    "ready_timeout_s": (0, False),
    "max_restarts": (0, True),
    "backoff_s": (0, True),
    "capacity_wait_s": (0, True),
    "limit": (1, True),
    "tail": (0, True),
}


class UsageError(ValueError):
    """A command line the launcher refuses before anything runs (printed as one ``error:`` line, exit 2)."""


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "bool" | "int" | "float" | "str" | "raw"
    required: bool
    keyword_only: bool = False  # only as --flag (Fire never fills it from a positional argument)


def _is_flag(arg: str) -> bool:
    """Fire's rule: a flag starts with ``--`` or ``-letter`` (so ``-5`` is a value)."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def _kind(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0] if len(args) == 1 else None
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint is str:
        return "str"
    return "raw"  # a list, a dict, an unknown type: left to Fire as typed


def signature(fn: Callable[..., Any]) -> list[_Param]:
    """The parameters of ``fn`` (a bound or unbound method; ``self`` left out) with the kind of value each takes."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that cannot be resolved here: Fire decides those values
        hints = {}
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(
            _Param(
                p.name,
                _kind(hints.get(p.name)),
                p.default is inspect.Parameter.empty,
                p.kind == p.KEYWORD_ONLY,
            )
        )
    return out


def _suggest(word: str, options: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not near:
        near = [o for o in options if o.startswith(word) or word.startswith(o)][:1]
    return near[0] if near else ""


def _value(
    p: _Param,
    raw: str,
    shown: str,
    choices: Mapping[str, Sequence[str]],
    checks: Mapping[str, Callable[[str], str | None]],
) -> str:
    """``raw`` checked for ``p`` and rewritten as a Python literal that Fire reads back unchanged."""
    if p.kind == "bool":
        low = raw.strip().lower()
        if low in _TRUE or low in _FALSE:
            return "True" if low in _TRUE else "False"
        raise UsageError(f"{shown} must be True or False (got {raw!r})")
    if p.kind == "int":
        if not re.fullmatch(r"[+-]?\d+", raw.strip()):
            raise UsageError(f"{shown} must be an integer (got {raw!r})")
        num: float = int(raw)
    elif p.kind == "float":
        try:
            num = float(raw)
        except ValueError:
            raise UsageError(f"{shown} must be a number (got {raw!r})") from None
        if not math.isfinite(num):
            raise UsageError(f"{shown} must be a finite number (got {raw!r})")
    else:
        allowed = choices.get(p.name)
        if allowed is not None:
            if raw.strip().lower() not in allowed:
                raise UsageError(f"{shown} must be one of {', '.join(allowed)} (got {raw!r})")
            raw = raw.strip().lower()
        check = checks.get(p.name)
        problem = check(raw) if check is not None else None
        if problem:
            raise UsageError(f"{shown}: {problem}")
        if p.kind == "raw":
            return raw
        return repr(raw)  # a quoted literal: Fire keeps it a string ('007', '1e3', 'None' stay as typed)
    bound = MINIMUM.get(p.name)
    if bound is not None and (num < bound[0] or (num == bound[0] and not bound[1])):
        rel = "at least" if bound[1] else "greater than"
        raise UsageError(f"{shown} must be {rel} {bound[0]:g} (got {raw!r})")
    return repr(num)


def parse(
    target: Any,
    argv: Sequence[str],
    commands: Sequence[str],
    *,
    default: str = "submit",
    choices: Mapping[str, Sequence[str]] | None = None,
    checks: Mapping[str, Callable[[str], str | None]] | None = None,
    prog: str = "python launch/submit.py",
) -> list[str]:
    """Check ``argv`` against ``target``'s ``commands`` and return the argv to give Fire (command first).

    A first word that is not a flag must be a command; without one, ``default`` runs. Raises ``UsageError``
    with a one-line message for anything Fire would misread or only reject after running the command."""
    choices = dict(choices or {})
    checks = dict(checks or {})
    args = list(argv)
    if args and args[0] in HELP_FLAGS:
        return args  # the launcher's own help: its list of commands
    if args and not _is_flag(args[0]):
        command, args = args[0], args[1:]
        if command.replace("-", "_") in {c.replace("-", "_") for c in commands}:
            command = next(c for c in commands if c.replace("-", "_") == command.replace("-", "_"))
        else:
            near = _suggest(command, commands)
            hint = f" (did you mean '{near}'?)" if near else ""
            if command.lower() in choices.get("gpu", ()):
                hint = f" (to submit for a GPU profile: --gpu {command})"
            raise UsageError(f"unknown command {command!r}{hint}; commands: {', '.join(commands)}")
    else:
        command = default
    fire_flags: list[str] = []
    if "--" in args:
        cut = len(args) - 1 - args[::-1].index("--")
        args, fire_flags = args[:cut], args[cut + 1 :]
        bad = [f for f in fire_flags if f not in FIRE_FLAGS]
        if bad:
            raise UsageError(f"unknown option {bad[0]!r} after '--' (allowed: {', '.join(FIRE_FLAGS)})")
    if any(a in HELP_FLAGS for a in args) or any(f in HELP_FLAGS for f in fire_flags):
        return [command, *args, *(["--", *fire_flags] if fire_flags else [])]  # Fire prints the help

    params = signature(getattr(target, command.replace("-", "_")))  # Fire accepts check-image for check_image
    by_name = {p.name: p for p in params}
    names = [p.name for p in params]
    given: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not _is_flag(arg):
            positional.append(arg)
            continue
        body, has_eq, raw = arg.lstrip("-").partition("=")
        key = body.replace("-", "_")
        shown = f"--{key}"
        nxt_is_value = i < len(args) and not _is_flag(args[i])
        if key in by_name:
            p = by_name[key]
            if has_eq:
                value = raw
            elif nxt_is_value:
                value, i = args[i], i + 1
            elif p.kind == "bool":
                value = "True"
            else:
                raise UsageError(f"{shown} needs a value ({shown} VALUE or {shown}=VALUE)")
        elif key.startswith("no") and key[2:] in by_name and not has_eq:
            p = by_name[key[2:]]
            if p.kind != "bool":
                raise UsageError(f"{shown}: --{p.name} is not a True/False flag; give it a value")
            value, key, shown = "False", p.name, f"--{p.name}"
            if nxt_is_value:
                raise UsageError(f"--no{p.name} takes no value (got {args[i]!r})")
        else:
            near = _suggest(key, names)
            hint = f" (did you mean --{near}?)" if near else ""
            raise UsageError(f"unknown flag {arg.split('=', 1)[0]} for {command}{hint}")
        if key in given:
            raise UsageError(f"{shown} given twice")
        given[key] = _value(by_name[key], value, shown, choices, checks)

    free = [p for p in params if p.name not in given and not p.keyword_only]
    if len(positional) > len(free):
        extra = positional[len(free)]
        takes = ", ".join(p.name.upper() for p in free) or "none"
        raise UsageError(f"unexpected argument {extra!r} for {command} (positional arguments left: {takes})")
    out_pos = [
        _value(p, raw, p.name.upper(), choices, checks) for p, raw in zip(free, positional, strict=False)
    ]
    filled = {p.name for p in free[: len(positional)]} | set(given)
    missing = [p.name for p in params if p.required and p.name not in filled]
    if missing:
        usage = " ".join(m.upper() for m in missing)
        raise UsageError(f"{command} needs {usage} ({prog} {command} {usage})")
    return [command, *out_pos, *(f"--{k}={v}" for k, v in given.items())]


def _image_check(ref: str) -> str | None:
    from qa_train.spec import image_problem

    problem = image_problem(ref)
    return f"not a valid Docker image reference {ref!r}: {problem}" if problem else None


def launcher_rules() -> dict[str, Any]:
    """Choices and checks of the launcher's parameters (``parse(..., **launcher_rules())``): the GPU profile,
    backend and offload names, and the image reference, refused with the valid values before anything runs."""
    from launch.backends import NAMES
    from launch.gpus import PROFILES
    from launch.render import OFFLOADS

    return {
        "choices": {"gpu": tuple(PROFILES), "backend": NAMES, "offload": OFFLOADS},
        "checks": {"image": _image_check},
    }
