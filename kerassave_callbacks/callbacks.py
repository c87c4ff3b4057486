"""SavedModelExporter: exports versions while `model.fit` runs."""

from __future__ import annotations

import functools
import queue
import sys

import keras
from absl import logging

from kerassave_callbacks import _checks, _files
from kerassave_callbacks import events as events_lib
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks import exporter as exporter_lib
from kerassave_callbacks import options as options_lib
from kerassave_callbacks import records as records_lib
from kerassave_callbacks import schedule as schedule_lib
from kerassave_callbacks.core import adapter, keras_api
from kerassave_callbacks.options import ExportOptions, RetentionPolicy
from kerassave_callbacks.publish_gate import PublishGate
from kerassave_callbacks.records import ExportError, ExportRejectedError
from kerassave_callbacks.schedule import ExportSchedule, History

ON_ERROR = ("raise", "warn")


class SavedModelExporter(adapter.BatchHooks, keras.callbacks.Callback):
    """Exports integer-versioned SavedModels for TF Serving during `fit`.

    Exports at the end of every `every_n_epochs`-th epoch, optionally every
    `every_n_steps` batches, and at the end of training (unless nothing
    trained since the last export), through a `VersionedExporter`: each
    version is committed complete or not at all, only the newest `keep` (and
    the best `keep_best` by `monitor`) are kept, and each export is recorded
    in TensorBoard under `<log_dir>/export`. In multi-worker training only
    the chief writes.

    The same class goes into Keras 3's `fit` and Keras 2's (`tf_keras`,
    the `tf_keras` extra). Under `MultiWorkerMirroredStrategy`, which only
    Keras 2's `fit` supports, a Keras 3 model is refused at
    `on_train_begin`.

    Example:

        exporter = SavedModelExporter("/tmp/exports", keep=3,
                                      monitor="val_loss", keep_best=1,
                                      log_dir="/tmp/logs")
        model.fit(x, y, validation_split=0.2, epochs=10, callbacks=[exporter])
        newest = max(exporter.versions())
        tf.saved_model.load(f"/tmp/exports/{newest}", tags=["serve"])

    Args:
      export_dir: the base directory TF Serving polls (`--model_base_path`).
      keep: the newest versions to keep; None keeps all. Defaults to 5.
      every_n_epochs: export after every n-th epoch. Defaults to 1.
      every_n_steps: also export every n training steps (batches), counted
        as `keras.callbacks.ModelCheckpoint` counts `save_freq`: with
        `steps_per_execution` above 1 the export comes at the first batch
        hook at or past each n steps. Defaults to None.
      export_on_train_end: export when training ends if the model trained
        since the last export (not with `save_best_only`). Defaults to True.
      monitor: a key of the epoch logs, e.g. "val_loss", for `keep_best` and
        `save_best_only`. Defaults to None.
      mode: "min", "max" or "auto". Defaults to "auto".
      keep_best: also keep the best versions by `monitor`. Defaults to None.
      save_best_only: export only when `monitor` improves on the best value
        so far (read back from the versions on disk, so it holds across
        restarts). Defaults to False.
      keep_every_n_hours: also keep one version per this many hours.
        Defaults to None.
      grace_seconds: a version retention drops is deleted only once it has
        been superseded for this long, so a server that picked it as the
        newest can finish loading it; the end of `fit` waits the last grace
        period out (at most this long). 0 deletes at once. Defaults to 10.
      serving_only, input_signature, custom_objects, as_text,
        target_signature, warmup_inputs, async_export, signatures: what
        each export writes, and whether in a background thread (training
        then waits only for a snapshot of the variables; pending exports
        are waited for at the end of training); see `ExportOptions`. Default to False,
        None, None, False, None, None, False, None.
      validate: the publish gate (True, False or a `PublishGate`): a
        version that fails it is not published (kept as
        `rejected-<version>`), `export/rejected` is written, and `on_error`
        decides whether training goes on. Defaults to True.
      log_dir: where to write export events for TensorBoard. Defaults to
        None (no events).
      on_error: "raise" stops `fit` on a failed export; "warn" logs it,
        records `export/error` and trains on. Defaults to "raise".
      verbose: 1 prints a line per export. Defaults to 0.
      retention, options, schedule: a `RetentionPolicy`, `ExportOptions` or
        `ExportSchedule` instead of the keywords it holds. Default to None.

    With `on_error="warn"` nothing an export does stops training: each
    failure is logged and recorded as `export/error` at the step of its
    export, and the next export goes on; a failure after the commit never
    removes the version. A failed last export is tried again at train end.
    The callback keeps its exporter (and traced graphs) across `fit` calls;
    `close()`, or leaving a `with` block, waits for pending exports and
    stops its threads. `versions()` may be called from any thread.

    Raises:
      TypeError, ValueError: a bad argument, named in the message; at
        `on_train_begin`, a Keras 3 model under MultiWorkerMirroredStrategy.
    """

    def __init__(
        self,
        export_dir: str,
        keep: int | None = 5,
        *,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        export_on_train_end: bool = True,
        monitor: str | options_lib.Monitor | None = None,
        mode: str = "auto",
        keep_best: int | None = None,
        save_best_only: bool = False,
        keep_every_n_hours: float | None = None,
        grace_seconds: float = options_lib.DEFAULT_GRACE_SECONDS,
        serving_only: bool = False,
        input_signature=None,
        custom_objects: dict | None = None,
        as_text: bool = False,
        target_signature=None,
        warmup_inputs=None,
        async_export: bool = False,
        signatures: dict | None = None,
        validate: bool | PublishGate = True,
        log_dir: str | None = None,
        on_error: str = "raise",
        verbose: int = 0,
        retention: options_lib.RetentionPolicy | None = None,
        options: options_lib.ExportOptions | None = None,
        schedule: schedule_lib.ExportSchedule | None = None,
    ):
        keywords = locals()  # The front door's keywords build the values.
        super().__init__()
        value_of = options_lib.value_of
        self.schedule = value_of("schedule", schedule, ExportSchedule, keywords)
        self.retention = value_of("retention", retention, RetentionPolicy, keywords)
        self.options = value_of("options", options, ExportOptions, keywords)
        self.monitor = options_lib.as_monitor(monitor, mode)
        self.retention.check_monitor(self.monitor)
        if self.schedule.save_best_only and not self.monitor.name:
            raise ValueError(
                "`save_best_only=True` needs `monitor`, the metric that must "
                "improve. Pass e.g. monitor='val_loss'."
            )
        _checks.check_choice("on_error", on_error, ON_ERROR)
        _checks.check_choice("verbose", verbose, (0, 1))
        # Nothing is written until the chief begins training.
        self.export_dir = _files.check_export_dir(export_dir)
        self.log_dir = log_dir
        self.on_error = on_error
        self.verbose = int(verbose)
        self.exporter: exporter_lib.VersionedExporter | None = None
        self._events: events_lib.ExportEvents | None = None
        # Commits the writer reports; applied in the training thread.
        self._commits: queue.SimpleQueue = queue.SimpleQueue()
        self._lines: list[str] = []  # verbose lines not printed yet.
        self._warned_missing = False
        self._closed = False
        self._start_fit()
        if self.schedule.every_n_steps is not None:
            # Keras calls batch hooks of every callback; define ours only
            # when asked, so that no per-batch work happens otherwise.
            self.on_train_batch_end = self._on_train_batch_end

    def _start_fit(self) -> None:
        """The state of one `fit`, from its start."""
        self._steps = schedule_lib.StepCounter()
        # Epochs completed (what Keras prints as `Epoch n/N` after the n-th,
        # and what `fit(initial_epoch=...)` takes): what versions record.
        self._epochs_done: int | None = None
        self._history = History()

    def _uses_train_batch_hooks(self) -> bool:
        """Whether it exports from batch hooks (Keras 2's `fit` asks)."""
        return self.schedule.every_n_steps is not None

    def versions(self) -> list[int]:
        """The complete versions in `export_dir`, oldest first.

        Example:

            model.fit(x, y, epochs=3, callbacks=[exporter])
            newest = max(exporter.versions())
        """
        return export_dir_lib.ExportDir(self.export_dir, self.options.layout).versions()

    def close(self) -> None:
        """Waits for pending exports, stops the exporter's threads, closes
        the event writer. A closed callback refuses to train again.

        Example:

            with SavedModelExporter("/tmp/exports", async_export=True) as cb:
                model.fit(x, y, epochs=3, callbacks=[cb])

        Raises:
          ExportError: the pending async export failed (with `on_error`
            "raise").
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.exporter is not None:
                self._guard(self.exporter.close)
                self._take_commits()
        finally:
            self.exporter = None
            if self._events is not None:
                self._events.close()
                self._events = None

    def __enter__(self) -> SavedModelExporter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Keras hooks.

    def on_train_begin(self, logs=None):
        if self._closed:
            raise RuntimeError(
                f"This SavedModelExporter of {self.export_dir!r} is closed. "
                "Make a new one to export from another fit."
            )
        self._start_fit()
        strategy = keras_api.check_supported(self.model)
        if not strategy.extended.should_checkpoint:
            self.exporter = None  # Not the chief: only the chief writes.
            return
        if self.exporter is None:
            self.exporter = exporter_lib.VersionedExporter(
                self.export_dir,
                monitor=self.monitor,
                retention=self.retention,
                options=self.options,
                on_commit=self._commits.put,  # The writer only reports.
            )
        if self.log_dir is not None and self._events is None:
            self._events = events_lib.ExportEvents(self.log_dir, self.monitor)
        if self.schedule.save_best_only:  # The best on disk, across restarts.
            self._history = History(best=self.exporter.best_value())

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = epoch + 1
        if self.schedule.at_epoch_end(epoch):
            self._maybe_export(
                self._epochs_done, schedule_lib.scalars(logs), at_epoch_end=True
            )

    def _on_train_batch_end(self, batch, logs=None):
        self._steps = self._steps.after_batch(batch)
        if self._steps.due(self.schedule.every_n_steps):
            self._steps = self._steps.exported()
            self._maybe_export(self._epochs_done, schedule_lib.scalars(logs))

    def on_epoch_begin(self, epoch, logs=None):
        self._epochs_done = epoch
        if self._lines:
            self._say()  # Keras has printed the last epoch's line by now.

    def on_train_end(self, logs=None):
        if self.exporter is None:
            return
        try:
            self._wait_for_pending()
            if keras_api.adapter_for(self.model).uses_ema(self.model):
                # fit() has just put the moving averages into the weights.
                self._history = self._history.exported(None, False)
            retry = self._history.retry
            if self.schedule.at_train_end:
                self._export(self._epochs_done, schedule_lib.scalars(logs))
            elif self._history.retry_due(self._step()):
                # The failed export was of this very state: try it again.
                self._export(retry.get("epoch"), retry.get("metrics") or {})
            self._guard(self.exporter.wait)
            self._take_commits()
        finally:
            if self._lines:
                self._say()
            if self._events is not None:
                self._events.close()
                self._events = None

    # Deciding.

    def _monitored(self, metrics: dict) -> float | None:
        name = self.monitor.name
        if not name:
            return None
        if name not in metrics:
            if not self._warned_missing:
                self._warned_missing = True
                logging.warning(
                    "SavedModelExporter monitors %r, which is not in the logs; "
                    "available keys: %s. Check `monitor` (validation metrics "
                    "need validation data).",
                    name,
                    sorted(metrics),
                )
            return None
        return self.monitor.value(metrics)

    def _maybe_export(
        self, epoch: int | None, metrics: dict, *, at_epoch_end: bool = False
    ) -> None:
        """Exports unless `save_best_only` and the monitor did not improve
        on the best value committed so far."""
        if self.exporter is None:
            return  # Not the chief.
        value = self._monitored(metrics)
        if self.schedule.save_best_only:
            self._wait_for_pending()  # The best so far counts only if committed.
            if not self.monitor.better(value, self._history.best):
                if self.verbose:
                    best = self._history.best
                    best = "-" if best is None else f"{best:.4g}"
                    self._lines.append(  # Printed after Keras' epoch line.
                        f"Epoch {epoch}: {self.monitor.name} did not improve from "
                        f"{best}; no export."
                    )
                return
        self._export(epoch, metrics, at_epoch_end=at_epoch_end)

    # Exporting.

    def _step(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations.numpy()) if optimizer is not None else None

    def _export(self, epoch, metrics: dict, *, at_epoch_end: bool = False) -> None:
        if self.exporter is None:
            return
        step = self._step()
        action = self._history.action(step, at_epoch_end)
        if action is schedule_lib.Action.ADD_METRICS:
            self._add_epoch_metrics(epoch, metrics)
        if action is not schedule_lib.Action.EXPORT:
            return
        self._history = self._history.exported(step, at_epoch_end)
        # A failed async export surfaces here; with "warn" this one goes on.
        self._wait_for_pending()
        failure = self._guard(
            lambda: self.exporter.export(
                self.model, epoch=epoch, step=step, metrics=metrics
            )
        )
        self._note_failure(failure)
        self._take_commits()

    def _add_epoch_metrics(self, epoch, metrics: dict) -> None:
        """Records an epoch's metrics into the step export of the same step
        (or exports again, if that export failed)."""
        self._wait_for_pending()
        if self._history.last_step is None:  # It failed: export this state now.
            self._export(epoch, metrics, at_epoch_end=True)
            return
        self._history = self._history.exported(self._history.last_step, True)
        version = self._history.last_version
        failure = self._guard(lambda: self.exporter.record_metrics(version, metrics))
        if failure is None:
            self._history = self._history.committed(
                metrics, self.monitor, self.schedule.save_best_only
            )

    def _wait_for_pending(self) -> None:
        """Waits for the async export in flight (its deletions go on)."""
        self._note_failure(self._guard(lambda: self.exporter.wait(deletions=False)))
        self._take_commits()

    def _note_failure(self, failure: ExportError | None) -> None:
        if failure is not None and failure.committed is None:  # Left nothing.
            retry = not isinstance(failure, ExportRejectedError)
            self._history = self._history.failed(failure.info, retry=retry)

    def _guard(self, fn) -> ExportError | None:
        """Runs an export step; a failure raises or warns as `on_error` says.

        The failure is recorded as `export/error` at the step of the export
        it belongs to (an async export fails after the next one started).

        Returns:
          The error when it failed and `on_error` is "warn", else None.
        """
        try:
            fn()
        except ExportError as e:
            if self._events is not None:
                self._events.failed(e)
            if self.on_error == "raise":
                raise
            logging.warning("Export failed; training goes on: %s", e)
            return e
        return None

    def _take_commits(self) -> None:
        """Applies, in the training thread, the commits the writer reported:
        the history moves, then the subscribers (events, the verbose line)
        hear of each. A subscriber that fails is an export failure after
        the commit (`ExportError.committed`)."""
        while not self._commits.empty():
            record = self._commits.get()
            self._history = self._history.committed(
                record.info.get("metrics") or {},
                self.monitor,
                self.schedule.save_best_only,
                record.version,
            )
            for subscriber in self._subscribers():
                self._guard(functools.partial(records_lib.notify, subscriber, record))

    def _subscribers(self) -> list:
        subscribers = [self._events.committed] if self._events else []
        if self.verbose:
            # Printed at the next hook after Keras' own epoch line.
            subscribers.append(
                lambda r: self._lines.append(
                    events_lib.progress_line(r, self.monitor.name)
                )
            )
        return subscribers

    def _say(self) -> None:
        """Prints the lines of exports since the last call, as
        `keras.callbacks.ModelCheckpoint` prints: to stdout."""
        lines, self._lines = self._lines, []
        for text in lines:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
