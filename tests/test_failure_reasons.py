"""Typed failure reasons (issue 21 item 7): the controller records a ``FailureReason`` with each decision and
finds its own events again by that value, never by their text; ``status`` shows the cause and a launch count."""

from __future__ import annotations

import sqlite3

from launch.backends.base import InstanceState
from launch.jobs.recovery import RecoveryPolicy
from launch.jobs.state import JobState, Notice, Registry
from launch.jobs.status import status_lines, summary
from qa_train.contract import FailureReason
from tests.test_controller import JOB, offer

pytest_plugins = ["tests.test_controller"]  # its `world` fixture: a registry, a fake cloud, a fake clock


def causes(w) -> list[tuple[JobState, object]]:
    return [(e.state, e.cause) for e in w.reg.events(JOB) if e.cause is not None]


def test_a_training_error_is_recorded_as_such(world):
    w = world
    w.clock.at(15, lambda: (w.reports.failed("train", 1), w.cloud.set("fake-i1", InstanceState.EXITED)))
    assert w.controller().run() == JobState.FAILED
    assert causes(w) == [(JobState.FAILED, FailureReason.TRAINING_ERROR)]
    assert w.reg.failure(JOB) == FailureReason.TRAINING_ERROR


def test_a_stage_that_refused_its_input_is_bad_input(world):
    w = world
    w.clock.at(15, lambda: (w.reports.failed("inputs", 2), w.cloud.set("fake-i1", InstanceState.EXITED)))
    assert w.controller().run() == JobState.FAILED
    assert w.reg.failure(JOB) == FailureReason.BAD_INPUT


def test_a_preemption_then_max_restarts(world):
    w = world
    w.policy = RecoveryPolicy(max_restarts=1, backoff_s=1.0, ready_timeout_s=60.0)
    w.clock.at(15, lambda: w.cloud.set("fake-i1", InstanceState.STOPPED))
    w.clock.at(45, lambda: w.cloud.set("fake-i2", InstanceState.STOPPED))
    assert w.controller().run() == JobState.FAILED
    assert causes(w) == [
        (JobState.RECOVERING, FailureReason.INSTANCE_LOST),
        (JobState.FAILED, FailureReason.MAX_RESTARTS),
    ]


def test_no_capacity_for_longer_than_the_wait(world):
    w = world
    w.cloud.market = []
    assert w.controller().run() == JobState.FAILED
    assert w.reg.failure(JOB) == FailureReason.NO_CAPACITY


def test_the_budget_warning_is_found_by_its_cause_not_its_text(world):
    """A warning event whose text was reworded is still the warning; a note that merely starts with the same
    words is not."""
    w = world
    w.cloud.market = [offer(1, 36.0)]  # $0.01 per second
    w.policy = RecoveryPolicy(max_cost_usd=1.0)
    w.reports.running(step=20)
    w.reg.note(JOB, "budget warning: an operator's note, not the controller's warning")
    w.reg.note(JOB, "reworded: 80% of the money is spent", Notice.BUDGET_WARNING)
    w.cloud.stop = lambda iid: None  # type: ignore[method-assign]
    assert w.controller(stop_wait_s=10.0).run() == JobState.STOPPED_BUDGET
    warned = [e for e in w.reg.events(JOB) if e.cause == Notice.BUDGET_WARNING]
    assert len(warned) == 1 and warned[0].reason.startswith("reworded")  # not warned a second time
    assert w.reg.failure(JOB) == FailureReason.MAX_COST


def test_status_shows_the_cause_and_counts_the_launches(world):
    w = world
    w.clock.at(15, lambda: (w.reports.failed("train", 1), w.cloud.set("fake-i1", InstanceState.EXITED)))
    w.controller().run()
    doc = summary(w.reg, JOB)
    doc.update(
        events=[{"reason": e.reason} for e in w.reg.events(JOB)],
        launches=[vars(x) for x in w.reg.launches(JOB)],
    )
    first = status_lines(doc)[0]
    assert first.startswith(f"job {JOB}: FAILED [training_error] (managed), 1 launch(es)"), first
    assert "[{" not in first


def test_a_registry_from_before_causes_gets_the_column(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    with sqlite3.connect(root / "registry.sqlite") as c:
        c.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, ts REAL NOT NULL,"
            " state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', instance_id TEXT)"
        )
        c.execute("INSERT INTO events (job_id, ts, state, reason) VALUES ('old', 1, 'PENDING', 'submitted')")
    reg = Registry(root, redact=lambda v: v)
    assert [(e.reason, e.cause) for e in reg.events("old")] == [("submitted", None)]
    reg.claim("new", "local")
    reg.transition("new", JobState.CANCELLED, "cancelled by user", FailureReason.CANCELLED_BY_USER)
    assert reg.failure("new") == FailureReason.CANCELLED_BY_USER
