"""When the callback exports: pure decisions over the hooks' events.

`SavedModelExporter` feeds its Keras hooks (batch end, epoch end, train
end) through these and only acts on the answers, so the rules are tested as
tables without `fit`. A leaf: no TensorFlow, no Keras.
"""

from __future__ import annotations

import dataclasses
import enum

from kerassave_callbacks._checks import check_count


@dataclasses.dataclass(frozen=True)
class ExportSchedule:
    """When `SavedModelExporter` exports.

    Example:

        schedule = ExportSchedule(every_n_epochs=2, every_n_steps=500)
        SavedModelExporter("/tmp/exports", schedule=schedule)

    Args:
      every_n_epochs: export after every n-th epoch. Defaults to 1.
      every_n_steps: also export every n training steps, counted as
        `keras.callbacks.ModelCheckpoint` counts `save_freq` (with
        `steps_per_execution` above 1, at the first batch hook at or past
        each n steps). Defaults to None.
      export_on_train_end: export when training ends if the model trained
        since the last export (not with `save_best_only`). Defaults to True.
      save_best_only: export only when the monitor improves on the best
        value committed so far. Defaults to False.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
    """

    every_n_epochs: int = 1
    every_n_steps: int | None = None
    export_on_train_end: bool = True
    save_best_only: bool = False

    def __post_init__(self):
        check_count("every_n_epochs", self.every_n_epochs)
        check_count("every_n_steps", self.every_n_steps, "turns step exports off")

    def at_epoch_end(self, epoch: int) -> bool:
        """True when the end of (0-based) `epoch` exports."""
        return (epoch + 1) % self.every_n_epochs == 0

    @property
    def at_train_end(self) -> bool:
        """True when the end of training exports (if anything trained)."""
        return self.export_on_train_end and not self.save_best_only


@dataclasses.dataclass(frozen=True)
class StepCounter:
    """Training steps since the last step export, from the batch indices
    that batch hooks see (`batch` is the index of the last step a hook
    covers, so `steps_per_execution` > 1 counts right).

    Example:

        counter = StepCounter().after_batch(3)  # 4 steps
        counter.steps  # 4
    """

    steps: int = 0
    last_batch: int = -1

    def after_batch(self, batch: int) -> StepCounter:
        """The count after the hook of `batch` (a smaller index: a new epoch)."""
        new = batch + 1 if batch <= self.last_batch else batch - self.last_batch
        return StepCounter(self.steps + new, batch)

    def due(self, every_n_steps: int) -> bool:
        return self.steps >= every_n_steps

    def exported(self) -> StepCounter:
        """The count after a step export."""
        return StepCounter(0, self.last_batch)


class Action(enum.Enum):
    """What to do at an export point."""

    EXPORT = "export"
    SKIP = "skip"  # Nothing trained since the last export.
    ADD_METRICS = "add_metrics"  # Give the step export of this step the
    # epoch's metrics instead of exporting the same state again.


def action(
    step: int | None,
    last_step: int | None,
    last_had_epoch_metrics: bool,
    at_epoch_end: bool,
) -> Action:
    """What an export point (a step, an epoch end or the train end) does,
    given the optimizer `step` now and that of the last committed or
    pending export.

    Example:

        action(step=8, last_step=8, last_had_epoch_metrics=False,
               at_epoch_end=True)  # Action.ADD_METRICS
    """
    if step is None or step != last_step:
        return Action.EXPORT
    if at_epoch_end and not last_had_epoch_metrics:
        return Action.ADD_METRICS
    return Action.SKIP


@dataclasses.dataclass(frozen=True)
class History:
    """What the callback knows of its exports in one `fit`: a value,
    replaced (never changed) in the training thread only; the writer
    thread reports commits, which the callback applies there.

    Example:

        history = History().exported(step=8, at_epoch_end=False)
        history.action(step=8, at_epoch_end=True)  # Action.ADD_METRICS

    Attributes:
      last_step: the optimizer step of the last export taken (None: none,
        or it failed, so the next export point exports).
      last_at_epoch_end: whether that export carried its epoch's metrics.
      last_version: the version of the last commit.
      best: the best monitored value committed (`save_best_only`).
      retry: the export info of the last export that failed and left
        nothing, until a later one commits: retried at train end if the
        model has not trained since.
    """

    last_step: int | None = None
    last_at_epoch_end: bool = False
    last_version: int | None = None
    best: float | None = None
    retry: dict | None = None

    def action(self, step: int | None, at_epoch_end: bool) -> Action:
        """What an export point at the optimizer `step` does."""
        return action(step, self.last_step, self.last_at_epoch_end, at_epoch_end)

    def exported(self, step: int | None, at_epoch_end: bool) -> History:
        """After an export of `step` was started."""
        return dataclasses.replace(self, last_step=step, last_at_epoch_end=at_epoch_end)

    def failed(self, info: dict | None, *, retry: bool) -> History:
        """After an export that left no version: the next export point
        exports; with `retry`, `info` is tried again at train end (a
        rejected state is not: it would fail the gate again)."""
        return dataclasses.replace(
            self, last_step=None, retry=info if retry else self.retry
        )

    def committed(
        self, metrics: dict, monitor, save_best_only: bool, version: int | None = None
    ) -> History:
        """After a version with `metrics` reached the disk (or got them
        added): the best moves, only now."""
        value = monitor.value(metrics)
        better = save_best_only and monitor.better(value, self.best)
        return dataclasses.replace(
            self,
            retry=None,
            best=value if better else self.best,
            last_version=self.last_version if version is None else version,
        )

    def retry_due(self, step: int | None) -> bool:
        """Whether the failed export is of this very state."""
        return self.retry is not None and self.retry.get("step") == step


def scalars(logs: dict | None) -> dict[str, float]:
    """The numbers among a hook's logs, as floats (the rest left out)."""
    metrics = {}
    for name, value in (logs or {}).items():
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics
