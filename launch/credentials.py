"""Secrets (cloud keys, S3 credentials, HF token): read from env or files, handed to the instance only as env,
and redacted as ``***`` anywhere they could be printed or saved."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Passed into the container when set. Cloud API keys are used by the launcher only and never forwarded.
CONTAINER_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN")
LAUNCHER_SECRETS = ("VAST_API_KEY", "RUNPOD_API_KEY")
REDACTED = "***"


class SecretError(ValueError):
    pass


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional matching quotes around the value)."""
    out: dict[str, str] = {}
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SecretError(f"{p}: cannot read secrets file: {e.strerror}") from None
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


def load_secrets(
    names: tuple[str, ...] = CONTAINER_SECRETS,
    env: Mapping[str, str] | None = None,
    env_file: str | Path | None = None,
) -> dict[str, str]:
    """Values for ``names`` from (lowest first) an env file, ``NAME_FILE`` files, then the environment."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    file_vals = read_env_file(env_file) if env_file else {}
    for name in names:
        if name in file_vals:
            found[name] = file_vals[name]
        ref = env.get(f"{name}_FILE")
        if ref:
            try:
                found[name] = Path(ref).read_text(encoding="utf-8").rstrip("\n")
            except OSError as e:
                raise SecretError(f"{name}_FILE={ref}: cannot read: {e.strerror}") from None
        if env.get(name):
            found[name] = env[name]
    return {k: v for k, v in found.items() if v}


def redact(text: str, values: Mapping[str, str] | list[str]) -> str:
    """Replace every secret value in ``text`` with ``***`` (longest first, so overlapping values vanish)."""
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    for v in sorted((v for v in vals if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(v, REDACTED)
    return text
