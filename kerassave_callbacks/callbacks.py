"""SavedModelExporter: exports versions while `model.fit` runs."""

from __future__ import annotations

import math
import sys

import keras
import tensorflow as tf
from absl import logging

from kerassave_callbacks import _files, retention
from kerassave_callbacks import events as events_lib
from kerassave_callbacks import exporter as exporter_lib

ON_ERROR = ("raise", "warn")


def _scalar_logs(logs) -> dict[str, float]:
    metrics = {}
    for name, value in (logs or {}).items():
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def _improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _is_chief(model: keras.Model) -> bool:
    """True where this worker should write (always, outside multi-worker)."""
    strategy = (
        getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    )
    return bool(strategy.extended.should_checkpoint)


class SavedModelExporter(keras.callbacks.Callback):
    """Exports integer-versioned SavedModels for TF Serving during `fit`.

    Exports at the end of every `every_n_epochs`-th epoch, optionally every
    `every_n_steps` batches, and at the end of training (unless nothing
    trained since the last export), through a `VersionedExporter`: each
    version is committed complete or not at all, only the newest `keep` (and
    the best `keep_best` by `monitor`) are kept, and each export is recorded
    in TensorBoard under `<log_dir>/export`. In multi-worker training only
    the chief writes.

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
      every_n_steps: also export every n batches. Defaults to None.
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
      serving_only, input_signature, custom_objects, as_text,
        target_signature: passed to `export_saved_model`. Default to
        False, None, None, False, None.
      async_export: write in a background thread; training waits only for
        a snapshot of the variables. Pending exports are waited for at the
        end of training. Defaults to False.
      log_dir: where to write export events for TensorBoard. Defaults to
        None (no events).
      on_error: "raise" stops `fit` on a failed export; "warn" logs it,
        records `export/error` and trains on. Defaults to "raise".
      verbose: 1 prints a line per export. Defaults to 0.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        export_dir: str,
        keep: int | None = 5,
        *,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        export_on_train_end: bool = True,
        monitor: str | None = None,
        mode: str = "auto",
        keep_best: int | None = None,
        save_best_only: bool = False,
        keep_every_n_hours: float | None = None,
        serving_only: bool = False,
        input_signature=None,
        custom_objects: dict | None = None,
        as_text: bool = False,
        target_signature=None,
        async_export: bool = False,
        log_dir: str | None = None,
        on_error: str = "raise",
        verbose: int = 0,
    ):
        super().__init__()
        exporter_lib.check_count("every_n_epochs", every_n_epochs, allow_none=False)
        exporter_lib.check_count("every_n_steps", every_n_steps, allow_none=True)
        if save_best_only and not monitor:
            raise ValueError(
                "`save_best_only=True` needs `monitor`, the metric that must "
                "improve. Pass e.g. monitor='val_loss'."
            )
        exporter_lib.check_choice("on_error", on_error, ON_ERROR)
        exporter_lib.check_choice("verbose", verbose, (0, 1))
        self._exporter_args = dict(
            export_dir=export_dir,
            keep=keep,
            keep_best=keep_best,
            monitor=monitor,
            mode=mode,
            keep_every_n_hours=keep_every_n_hours,
            serving_only=serving_only,
            input_signature=input_signature,
            custom_objects=custom_objects,
            as_text=as_text,
            target_signature=target_signature,
            async_export=async_export,
        )
        # Every exporter argument is checked now; nothing is written until
        # the chief begins training.
        self.export_dir = exporter_lib.check_arguments(
            export_dir, keep, keep_best, monitor, mode, keep_every_n_hours
        )
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.export_on_train_end = export_on_train_end and not save_best_only
        self.monitor = monitor
        self.mode = retention.resolve_mode(mode, monitor)
        self.save_best_only = save_best_only
        self.log_dir = log_dir
        self.on_error = on_error
        self.verbose = int(verbose)
        self.exporter: exporter_lib.VersionedExporter | None = None
        self._events: events_lib.ExportEvents | None = None
        self._best: float | None = None
        self._last_step: int | None = None
        self._batches = 0
        self._epoch: int | None = None
        self._warned_missing = False
        if every_n_steps is not None:
            # Keras calls batch hooks of every callback; define ours only
            # when asked, so that no per-batch work happens otherwise.
            self.on_train_batch_end = self._on_train_batch_end

    def versions(self) -> list[int]:
        """The complete versions in `export_dir`, oldest first.

        Example:

            model.fit(x, y, epochs=3, callbacks=[exporter])
            newest = max(exporter.versions())
        """
        return _files.complete_versions(self.export_dir)

    # Keras hooks.

    def on_train_begin(self, logs=None):
        self._batches = 0
        self._epoch = None
        self._last_step = None
        if not _is_chief(self.model):
            self.exporter = None
            return
        if self.exporter is None:
            self.exporter = exporter_lib.VersionedExporter(
                **self._exporter_args, on_commit=self._on_commit
            )
        if self.log_dir is not None and self._events is None:
            self._events = events_lib.ExportEvents(self.log_dir)
        if self.save_best_only:
            self._best = self.exporter.best_value()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            self._maybe_export(epoch, _scalar_logs(logs))

    def _on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.every_n_steps == 0:
            self._maybe_export(self._epoch, _scalar_logs(logs))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_end(self, logs=None):
        if self.exporter is None:
            return
        try:
            if self.export_on_train_end:
                self._export(self._epoch, _scalar_logs(logs))
            self._guard(self.exporter.wait)
        finally:
            if self._events is not None:
                self._events.close()
                self._events = None

    # Deciding.

    def _monitored(self, metrics: dict) -> float | None:
        if not self.monitor:
            return None
        if self.monitor not in metrics:
            if not self._warned_missing:
                self._warned_missing = True
                logging.warning(
                    "SavedModelExporter monitors %r, which is not in the logs; "
                    "available keys: %s. Check `monitor` (validation metrics "
                    "need validation data).",
                    self.monitor,
                    sorted(metrics),
                )
            return None
        return metrics[self.monitor]

    def _maybe_export(self, epoch: int | None, metrics: dict) -> None:
        """Exports unless `save_best_only` and the monitor did not improve."""
        value = self._monitored(metrics)
        if self.save_best_only:
            if not _improved(value, self._best, self.mode):
                if self.verbose:
                    self._say(
                        f"Epoch {epoch}: {self.monitor} did not improve from "
                        f"{self._best}; no export."
                    )
                return
            self._best = value
        self._export(epoch, metrics)

    # Exporting.

    def _step(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations.numpy()) if optimizer is not None else None

    def _export(self, epoch, metrics: dict) -> None:
        if self.exporter is None:
            return
        step = self._step()
        if step is not None and step == self._last_step:
            return  # Nothing trained since the last export.
        self._last_step = step
        # A failed async export surfaces here; with "warn" this one goes on.
        self._guard(self.exporter.wait, step)
        exported = self._guard(
            lambda: self.exporter.export(
                self.model, epoch=epoch, step=step, metrics=metrics
            ),
            step,
        )
        if not exported:
            self._last_step = None  # The export at train end tries again.

    def _guard(self, fn, step: int | None = None) -> bool:
        """Runs an export; a failure raises or warns as `on_error` says.

        Returns:
          False when the export failed and `on_error` is "warn".
        """
        try:
            fn()
        except exporter_lib.ExportError as e:
            if self._events is not None:
                self._events.error(str(e), step if step is not None else 0)
            if self.on_error == "raise":
                raise
            logging.warning("Export failed; training goes on: %s", e)
            return False
        return True

    def _on_commit(self, record: exporter_lib.ExportRecord) -> None:
        if self._events is not None:
            step = record.info.get("step")
            self._events.record(record, step if step is not None else 0, self.monitor)
        if self.verbose:
            self._say(
                f"Exported version {record.version} to {record.path} in "
                f"{record.duration_seconds:.2f}s; removed versions {record.removed}"
            )

    @staticmethod
    def _say(line: str) -> None:
        # Like keras.callbacks.ModelCheckpoint's verbose output: to stdout.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
