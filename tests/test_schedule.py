"""The callback's scheduling rules as tables, without fit."""

from __future__ import annotations

import pytest

from kerassave_callbacks.options import Monitor
from kerassave_callbacks.schedule import (
    Action,
    ExportSchedule,
    History,
    StepCounter,
    action,
)

ACTIONS = {
    # (step, last_step, last_had_epoch_metrics, at_epoch_end) -> action
    "first_export": ((4, None, False, True), Action.EXPORT),
    "trained_since": ((8, 4, True, True), Action.EXPORT),
    "no_optimizer": ((None, None, False, True), Action.EXPORT),
    "step_export_then_epoch_end": ((8, 8, False, True), Action.ADD_METRICS),
    "epoch_end_twice": ((8, 8, True, True), Action.SKIP),
    "train_end_after_epoch_end": ((8, 8, True, False), Action.SKIP),
    "train_end_after_step_export": ((8, 8, False, False), Action.SKIP),
    "step_export_after_step_export": ((6, 6, False, False), Action.SKIP),
}


@pytest.mark.parametrize("args,expected", ACTIONS.values(), ids=ACTIONS)
def test_action(args, expected):
    assert action(*args) is expected


COUNTS = {
    # batch indices seen by the hooks -> steps counted
    "one_step_a_hook": ([0, 1, 2], 3),
    "steps_per_execution_4": ([3, 7], 8),
    "new_epoch_restarts_indices": ([0, 1, 2, 3, 0, 1], 6),
    "new_epoch_with_steps_per_execution": ([3, 7, 3], 12),
}


@pytest.mark.parametrize("batches,steps", COUNTS.values(), ids=COUNTS)
def test_step_counter_counts_as_model_checkpoint(batches, steps):
    counter = StepCounter()
    for batch in batches:
        counter = counter.after_batch(batch)
    assert counter.steps == steps
    assert counter.due(steps) and not counter.due(steps + 1)
    assert counter.exported().steps == 0


@pytest.mark.parametrize(
    "schedule, epochs, train_end",
    [
        (ExportSchedule(), [0, 1, 2, 3], True),
        (ExportSchedule(every_n_epochs=2), [1, 3], True),
        (ExportSchedule(save_best_only=True), [0, 1, 2, 3], False),
        (ExportSchedule(export_on_train_end=False), [0, 1, 2, 3], False),
    ],
    ids=["default", "every_2", "best_only", "no_train_end"],
)
def test_which_epochs_and_train_end_export(schedule, epochs, train_end):
    assert [e for e in range(4) if schedule.at_epoch_end(e)] == epochs
    assert schedule.at_train_end is train_end


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs=0"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs=1.5"),
        ({"every_n_steps": 0}, ValueError, "every_n_steps=0. Expected an integer"),
    ],
)
def test_bad_schedules_name_the_argument(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        ExportSchedule(**kwargs)


def test_history_is_a_value_each_step_a_new_one():
    start = History()
    taken = start.exported(8, at_epoch_end=False)
    assert start == History()  # Nothing changed in place.
    assert start.action(8, at_epoch_end=False) is Action.EXPORT
    assert taken.action(8, at_epoch_end=True) is Action.ADD_METRICS
    assert taken.action(8, at_epoch_end=False) is Action.SKIP

    failed = taken.failed({"step": 8, "epoch": 1}, retry=True)
    assert failed.last_step is None and failed.action(8, False) is Action.EXPORT
    assert failed.retry_due(8) and not failed.retry_due(9)
    # A rejected state is not tried again: the retry stays what it was.
    assert taken.failed({"step": 8}, retry=False).retry is None


@pytest.mark.parametrize(
    "values, save_best_only, best",
    [
        ([0.5, 0.6, 0.4], True, 0.4),
        ([0.5, 0.6], True, 0.5),
        ([0.5, 0.4], False, None),  # Only save_best_only keeps a best.
    ],
    ids=["improves", "worse_keeps_best", "not_asked"],
)
def test_history_best_moves_only_on_commits(values, save_best_only, best):
    history = History().failed({"step": 1}, retry=True)
    for version, value in enumerate(values):
        history = history.committed(
            {"val_loss": value}, Monitor("val_loss"), save_best_only, version
        )
    assert history.best == best
    assert history.retry is None and history.last_version == len(values) - 1
