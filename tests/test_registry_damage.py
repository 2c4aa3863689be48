"""A damaged registry page (issue 23 item 5): every registry read and write that meets it ends in the same one
``error:`` line (exit 1, no traceback), and ``list`` still shows the jobs it can read. The damage is real: one
page of the SQLite file overwritten in place, as a bad sector or a half-copied file leaves it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch.jobs.state import JobState, Registry, RegistryError
from tests.conftest import REPO

N = 150
MESSAGE = "is not a job registry (damaged or not SQLite: database disk image is malformed)"


def build(root: Path) -> Path:
    reg = Registry(root)
    for i in range(N):
        job = f"job-{i:03d}"
        reg.claim(job, "local", gpu="cpu", run_name=f"rn-{i:03d}", run_uri=f"s3://b/runs/rn-{i:03d}")
        reg.note(job, f"ev-{i:03d} " + "x" * 40)
        reg.add_launch(job, backend="local", instance_id=f"inst-{i:03d}")
    return root / "registry.sqlite"


def smash_page_holding(db: Path, needle: bytes, page_type: int) -> int:
    """Overwrite (with garbage) the b-tree leaf page of type ``page_type`` (0x0D: table leaf) that holds
    ``needle``; returns its page number (1-based)."""
    data = bytearray(db.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    for n in range(1, len(data) // size):  # page 1 holds the schema: never that one
        page = data[n * size : (n + 1) * size]
        if page[0] == page_type and needle in page:
            data[n * size : (n + 1) * size] = bytes([0xA5]) * size
            db.write_bytes(bytes(data))
            return n + 1
    raise AssertionError(f"no page of type {page_type:#x} holds {needle!r}")


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    for name in list(os.environ):
        if name.startswith(("AWS_", "VAST_", "RUNPOD_", "QA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))

    def run(*args: str) -> tuple[int, str, str]:
        from launch.submit import main

        rc = main(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "sqlite3." not in err
    return lines[0]


def test_damaged_jobs_page(cli, tmp_path):
    db = build(tmp_path / "runs")
    smash_page_holding(db, b"rn-075", 0x0D)

    rc, out, err = cli("list")
    assert rc == 1
    assert one_error(err) == f"error: {db} {MESSAGE}; move it away to start a new one"
    shown = {ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()}
    assert "job-075" not in shown
    assert {"job-000", f"job-{N - 1:03d}"} <= shown, "rows on the pages before and after the damage are shown"
    assert 0 < len(shown) < N

    for argv in (("status", "job-075"), ("cancel", "job-075"), ("status", "--json")):
        rc, out, err = cli(*argv)
        assert rc == 1, (argv, out, err)
        assert MESSAGE in one_error(err), argv

    reg = Registry.__new__(Registry)  # the API itself, past the CLI: the same error type and line
    reg.path, reg.root = db, db.parent
    reg._redact, reg.clock = (lambda v: v), (lambda: 0.0)
    for call in (
        lambda: reg.get("job-075"),
        lambda: reg.transition("job-075", JobState.CANCELLED, "x"),
        lambda: reg.set("job-075", restarts=1),
        lambda: reg.list(),
    ):
        with pytest.raises(RegistryError, match=r"damaged or not SQLite"):
            call()


def test_damaged_events_page(cli, tmp_path):
    db = build(tmp_path / "runs")
    smash_page_holding(db, b"ev-040 ", 0x0D)
    reg = Registry(tmp_path / "runs")  # opening still works: the schema page is intact
    assert reg.get("job-040") is not None
    with pytest.raises(RegistryError, match=r"damaged or not SQLite"):
        reg.events("job-040")
    with pytest.raises(RegistryError, match=r"damaged or not SQLite"):
        reg.note("job-040", "y")  # a write: the insert lands past the damage, the read of the page does not
        reg.events("job-040")
    rc, out, err = cli("list")  # every job row is readable; job-040's events are not
    assert rc == 1 and MESSAGE in one_error(err)
    assert "job-040" in out and "job-000" in out


def test_garbage_file_is_the_same_line(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "registry.sqlite").write_bytes(b"not sqlite" * 500)
    with pytest.raises(RegistryError, match=r"is not a job registry \(damaged or not SQLite: file is not a"):
        Registry(root)
