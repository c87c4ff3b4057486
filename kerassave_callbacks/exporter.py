"""VersionedExporter: integer-versioned SavedModels under one export_dir."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from absl import logging

from kerassave_callbacks import (
    _files,
    _fs,
    _leftovers,
    _publishing,
    graph_cache,
    layout,
    retainer,
)
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks import options as options_lib
from kerassave_callbacks.core import export as core_export
from kerassave_callbacks.core import keras_api
from kerassave_callbacks.options import ExportOptions, RetentionPolicy
from kerassave_callbacks.publish_gate import PublishGate
from kerassave_callbacks.records import (
    AsyncWriter,
    ExportError,
    ExportRecord,
    ExportRejectedError,
    PendingExport,
    after_commit_error,
)

_COMMIT_ATTEMPTS = 20


class VersionedExporter:
    """Writes integer-versioned SavedModels that TF Serving can load.

    Each `export()` writes `<export_dir>/<version>`, version = seconds since
    the epoch, raised above the largest existing version when needed, so
    versions strictly increase, also within one second, across restarts and
    with several processes on one `export_dir`. A version is written under a
    temporary name TF Serving ignores and committed (renamed, or on object
    stores copied with `saved_model.pb` last) only when complete; each holds
    `assets.extra/export_info.json`. After each export, retention keeps the
    newest `keep` versions, plus the best `keep_best` by `monitor` and one
    per `keep_every_n_hours` if asked, and deletes only other integer-named
    version directories. Graphs are traced and serialized once per model;
    later exports write only the variables.

    Symbolic links in `export_dir` are the user's: an integer-named link is
    served and numbered like a version, but never deleted (nor anything
    through it) and not counted by `keep`.

    Threads: `versions()` may be called from any thread, the rest from one
    (the training loop); `on_commit` runs in the thread that writes.
    `close()` (or leaving a `with` block) waits for pending work and stops
    the exporter's threads; a closed exporter refuses to export.

    Example:

        exporter = VersionedExporter("/tmp/exports", keep=3)
        for epoch in range(10):
            model.fit(x, y, epochs=1)
            exporter.export(model, epoch=epoch)
        exporter.versions()  # the three newest, e.g. [1764070003, ...]

        with VersionedExporter("/tmp/exports", async_export=True) as exporter:
            pending = exporter.export(model)
        pending.result().version  # committed when the block was left

    Args:
      export_dir: the base directory TF Serving polls (`--model_base_path`);
        any `tf.io.gfile` path.
      keep, keep_best, keep_every_n_hours, grace_seconds: what retention
        keeps (the newest `keep`, None: all; the best `keep_best` by
        `monitor`; one per `keep_every_n_hours`) and how long a dropped
        version stays once superseded (`wait()` and `close()` wait it out);
        see `RetentionPolicy`. Default to 5, None, None, 10.
      monitor, mode: the metric in `export(metrics=...)` that `keep_best`
        ranks by, or a `Monitor`; "min", "max" or "auto". Default to None,
        "auto".
      serving_only, input_signature, custom_objects, as_text,
        target_signature, warmup_inputs, async_export, signatures: what
        each export writes, and whether in a background thread (`wait()`
        blocks until it is committed; at most one is in flight); see
        `ExportOptions`. Default to False, None, None, False, None, None,
        False, None.
      validate: the publish gate (True, False or a `PublishGate`): before
        its rename, each version is loaded from disk as TF Serving loads
        it, its warm-up replayed and its answers compared with the model's;
        one that fails is kept as `rejected-<version>` and `export()`
        raises `ExportRejectedError`. Defaults to True.
      on_commit: called with an `ExportRecord` after each committed export
        (in the writing thread). Defaults to None.
      clock: returns the unix time; for tests. Defaults to `time.time`.
      retention: a `RetentionPolicy` instead of `keep`, `keep_best`,
        `keep_every_n_hours` and `grace_seconds`. Defaults to None.
      options: an `ExportOptions` instead of the keywords it holds (from
        `serving_only` to `signatures`). Defaults to None.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
      PermissionError: `export_dir` cannot be written.
      ImportError: `warmup_inputs` without the `serving` extra.
    """

    def __init__(
        self,
        export_dir: str,
        keep: int | None = 5,
        *,
        keep_best: int | None = None,
        monitor: str | options_lib.Monitor | None = None,
        mode: str = "auto",
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
        on_commit: Callable[[ExportRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
        retention: options_lib.RetentionPolicy | None = None,
        options: options_lib.ExportOptions | None = None,
    ):
        keywords = locals()  # The front door's keywords build the values.
        value_of = options_lib.value_of
        self.retention = value_of("retention", retention, RetentionPolicy, keywords)
        self.options = value_of("options", options, ExportOptions, keywords)
        self.monitor = options_lib.as_monitor(monitor, mode)
        self.retention.check_monitor(self.monitor)
        self.export_dir = _files.check_export_dir(export_dir)
        self._dir = export_dir_lib.ExportDir(self.export_dir, self.options.layout)
        self.on_commit = on_commit
        self._clock = clock
        self._cache = graph_cache.GraphCache(self.options)
        self._last_version = 0
        self._writer = AsyncWriter()  # Writes async exports.
        # Lists, ranks and deletes (after its grace period) what is dropped.
        self._retainer = retainer.Retainer(
            self._dir, self.retention, self.monitor, clock
        )
        self._closed = False
        self.cleanup()

    # Lifecycle.

    def close(self) -> None:
        """Waits for pending work, then stops the exporter's threads.

        Calling it again does nothing. After it, `export()` raises.

        Example:

            exporter = VersionedExporter("/tmp/exports", async_export=True)
            exporter.export(model)
            exporter.close()  # the version is committed, the threads are gone

        Raises:
          ExportError: the pending async export failed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._writer.close()
            self._retainer.close()

    def __enter__(self) -> VersionedExporter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Listing and cleanup.

    def versions(self) -> list[int]:
        """The complete versions on disk, oldest first.

        Example:

            VersionedExporter("/tmp/exports").versions()  # [1764070001, ...]
        """
        return self._dir.versions()

    def cleanup(self) -> list[str]:
        """Removes what crashed exports left behind; returns the removed paths.

        A temporary is removed once its writer is gone (same host: its
        process has ended; other hosts: an hour after it started). On object
        stores an integer directory without `saved_model.pb` (a copy cut
        short) is removed an hour after its version time. Nothing else is
        touched. Runs when the exporter is made.

        Example:

            VersionedExporter("/tmp/exports").cleanup()  # [] when all is clean
        """
        return _leftovers.remove_leftovers(
            self.export_dir, self._clock(), self.options.layout
        )

    # Exporting.

    def _next_version(self) -> int:
        self._last_version = self._dir.next_version(self._clock(), self._last_version)
        return self._last_version

    def export(
        self,
        model,
        *,
        epoch: int | None = None,
        step: int | None = None,
        metrics: dict | None = None,
    ) -> str | PendingExport:
        """Exports `model` as a new version.

        Example:

            path = exporter.export(model, epoch=3, metrics={"val_loss": 0.2})
            tf.saved_model.load(path, tags=["serve"])

        Args:
          model: the `keras.Model` (or `tf_keras.Model`) to export.
          epoch: the epochs completed, recorded in export_info.json (what
            `fit(initial_epoch=...)` takes to resume). Defaults to None.
          step: recorded in export_info.json (optimizer iterations).
            Defaults to None.
          metrics: name -> value, recorded and used by `keep_best`.
            Defaults to None.

        Returns:
          The path of the committed version directory; with `async_export`
          a `PendingExport`, whose `result()` is the `ExportRecord` of the
          version it commits, whatever number it ends up with. (The first
          export of a model traces its graphs before returning; only for a
          model with distributed variables is it synchronous throughout.)

        Raises:
          ExportError: the export (or, with `async_export`, the previous
            one) failed, tracing the model's graphs included.
          RuntimeError: the exporter was closed.
        """
        started = time.monotonic()
        core_export.check_model(model)
        if self._closed:
            raise RuntimeError(
                f"This VersionedExporter of {self.export_dir!r} is closed. Make "
                "a new one to export again."
            )
        # Retention's deletions go on in the background meanwhile.
        self.wait(deletions=False)
        info = layout.ExportInfo(
            epoch=epoch,
            step=step,
            metrics=dict(metrics or {}),
            library=keras_api.library_versions(model),
        )
        draft = info.to_json()  # What a failure before the version reports.
        graphs, values = self._cache.snapshot(model, draft)
        gate = _publishing.expectation(
            self._cache,
            self.options.validate,
            self.monitor,
            info.metrics,
            self._retainer.best_value(),
            draft,
        )
        info = dataclasses.replace(
            info,
            version=self._next_version(),
            created=self._clock(),
            tags=tuple(m.tag for m in graphs.modes),
            names=graphs.names,
        )
        write = lambda: self._write(graphs, values, info, started, gate)  # noqa: E731
        # Tracing happened above, in this thread; what is left (for a first
        # export also tf.saved_model.save) runs in the background, unless
        # saving would trace the model again (distributed variables).
        if self.options.async_export and graphs.saves_without_tracing:
            return self._writer.submit(write)
        return write().path

    @property
    def pending(self) -> PendingExport | None:
        """The async export in flight (or ended but not yet waited for).

        Example:

            exporter.export(model)  # async_export=True
            exporter.pending.result().version
        """
        return self._writer.pending

    def wait(self, *, deletions: bool = True) -> None:
        """Blocks until the pending async export is committed, and (unless
        `deletions` is False) every deletion retention decided is done,
        grace periods waited out (at most `grace_seconds`).

        Example:

            exporter.export(model)  # async_export=True: returns at once
            exporter.wait()         # the version is on disk now

        Args:
          deletions: also wait for the background deletion of the versions
            retention dropped. Defaults to True.

        Raises:
          ExportError: that export failed.
        """
        try:
            self._writer.wait()
        finally:
            if deletions:
                self._retainer.wait()

    def _write(
        self, graphs, values, info: layout.ExportInfo, started: float, gate
    ) -> ExportRecord:
        try:
            _fs.makedirs(self.export_dir)
            with _files.Staging(self.export_dir, self._clock()) as staged:
                root = self.options.layout.root(staged.path)
                graphs.write(root, values, as_text=self.options.as_text)
                if gate is not None:
                    staged.start_flush()  # The disk writes while the gate reads.
                    _publishing.check(
                        staged, self.export_dir, info, gate, self.options, self._clock()
                    )
                path, info = self._commit(staged, info)
        except ExportRejectedError:
            raise
        except Exception as e:
            raise ExportError(
                f"Export of version {info.version} to {self.export_dir!r} "
                f"failed: {e}. No version directory was left for it.",
                info=info.to_json(),
            ) from e
        return self._after_commit(path, info, started)

    def _commit(
        self, staged: _files.Staging, info: layout.ExportInfo
    ) -> tuple[str, layout.ExportInfo]:
        """Writes the export info and finalizes; another writer that took
        the version first makes this one take the next. Returns the path
        and the info committed."""
        info_path = self.options.layout.info_path(staged.path)
        for _ in range(_COMMIT_ATTEMPTS):
            _files.write_json(info_path, info.to_json())
            final = self._dir.version_path(info.version)
            try:
                staged.finalize(final, (layout.EXPORT_INFO,), self.options.layout)
                return final, info
            except FileExistsError:
                info = dataclasses.replace(info, version=self._next_version())
        raise FileExistsError(
            f"Could not find a free version name in {self.export_dir!r} after "
            f"{_COMMIT_ATTEMPTS} attempts."
        )

    def _after_commit(
        self, path: str, info: layout.ExportInfo, started: float
    ) -> ExportRecord:
        """Retention and `on_commit` for a committed version: what fails
        here is reported, but never undoes the commit."""
        self._retainer.remember(info.version, info)
        removed, kept, failures = self._retainer.apply(info.version)
        try:
            size = _files.dir_size(path)
        except OSError as e:  # Another process's retention, say.
            size = 0
            failures.append(e)
        record = ExportRecord(
            version=info.version,
            path=path,
            info=info.to_json(),
            duration_seconds=time.monotonic() - started,
            size_bytes=size,
            removed=removed,
            kept=kept,
        )
        logging.vlog(
            1,
            "Exported version %d to %s in %.2fs",
            record.version,
            path,
            record.duration_seconds,
        )
        if self.on_commit is not None:
            try:
                self.on_commit(record)
            except Exception as e:
                failures.append(e)
        if failures:
            raise after_commit_error(record, failures) from failures[0]
        return record

    def record_metrics(self, version: int, metrics: dict) -> None:
        """Adds `metrics` to the export info of a committed version.

        For metrics known only after the version was taken (an epoch's
        validation metrics, after a step export of that same step). The info
        file is replaced whole, never seen half-written; TF Serving does not
        read it. Retention's next pass ranks the version by them.

        Example:

            path = exporter.export(model, step=300)
            exporter.record_metrics(int(os.path.basename(path)),
                                    {"val_loss": 0.21})

        Raises:
          ExportError: the version's info could not be read or replaced.
        """
        path = self.options.layout.info_path(self._dir.version_path(version))
        info = export_dir_lib.read_info(self._dir.saved_model_path(version))
        if info is None:
            raise ExportError(f"Version {version} has no readable {path}.")
        info = dataclasses.replace(info, metrics={**info.metrics, **metrics})
        try:
            _files.replace_file(path, layout.json_bytes(info.to_json()), self._clock())
        except OSError as e:
            raise ExportError(
                f"Could not add metrics to version {version} ({path}): {e}",
                info=info.to_json(),
                committed=self._dir.version_path(version),
            ) from e
        self._retainer.remember(version, info)

    def best_value(self) -> float | None:
        """The best `monitor` value recorded by the versions on disk, or None.

        Example:

            VersionedExporter("/tmp/exports", monitor="val_loss").best_value()
        """
        return self._retainer.best_value()
