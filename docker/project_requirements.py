"""Print the project's requirements (core + extras) from pyproject.toml, one per line.

Why: the images install dependencies in a layer that only depends on pyproject.toml, before the source is
copied, so editing code does not reinstall torch-sized dependencies. Both Dockerfiles call this helper with the
same ``--extras`` so the GPU and CPU images carry the same project extras; the CPU image passes
``--exclude flash-attn`` (CUDA-only) and the GPU image installs flash-attn in its own build stage.

The core list is the launcher's; the images ask for ``train`` (torch, transformers, ...) among their extras.

Usage: python project_requirements.py pyproject.toml --extras train,gpu [--exclude flash-attn]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503 name normalization (``Flash_Attn`` == ``flash-attn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return normalize(match.group(1))


def project_requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    """Core dependencies + the named extras, minus excluded names; unknown extras are an error. An extra that
    names the project itself (``qa-expert-trainer[train]`` in ``dev`` and ``eval``) brings that extra's list in
    place, as pip would."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"error: {pyproject}: unknown extra(s) {unknown}; known: {sorted(optional)}")
    me = normalize(project["name"])
    reqs: list[str] = list(project.get("dependencies", []))
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in done:
            continue
        done.add(extra)
        for req in optional[extra]:
            if requirement_name(req) == me:
                todo += [e.strip() for e in req[req.index("[") + 1 : req.index("]")].split(",")]
            else:
                reqs.append(req)
    skip = {normalize(e) for e in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for req in reqs:
        if requirement_name(req) in skip or req in seen:
            continue
        seen.add(req)
        out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject", type=Path)
    p.add_argument("--extras", default="", help="comma-separated extras, e.g. gpu")
    p.add_argument("--exclude", default="", help="comma-separated package names to leave out")
    a = p.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    for req in project_requirements(a.pyproject, split(a.extras), split(a.exclude)):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
