"""VersionedExporter: integer-versioned SavedModels under one export_dir."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import posixpath
import time
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from kerassave_callbacks import (
    _files,
    _fs,
    _leftovers,
    _rejected,
    graph_cache,
    layout,
    retainer,
)
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks import options as options_lib
from kerassave_callbacks._version import __version__
from kerassave_callbacks.core import export as core_export
from kerassave_callbacks.core import keras_api, validation
from kerassave_callbacks.options import ExportOptions, RetentionPolicy
from kerassave_callbacks.records import (
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

    Symbolic links in `export_dir` belong to the user: an integer-named link
    (a pinned model linked in) is served by TF Serving and counts when the
    next version number is chosen, but retention never deletes it, nor
    anything through it, and it does not count towards `keep`.

    Threads: `export()`, `wait()`, `close()`, `best_value()` and
    `record_metrics()` are for one thread (the training loop; the last two
    share retention's cache); `versions()` may be called from any thread.
    `on_commit` runs in the thread that writes. `close()` (or leaving a
    `with` block) waits for pending work and stops the exporter's threads;
    a closed exporter refuses to export.

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
      keep: how many of the newest versions to keep; None keeps all.
        Defaults to 5.
      keep_best: also keep this many best versions by `monitor`. Defaults
        to None.
      monitor: the metric name in `export(metrics=...)` that `keep_best`
        ranks by, or a `Monitor`. Defaults to None.
      mode: "min", "max" or "auto" (max for accuracy-like names). Defaults
        to "auto".
      keep_every_n_hours: also keep one version per this many hours.
        Defaults to None.
      grace_seconds: a version retention drops is deleted only once it
        has been superseded this long, so that a server that picked it as
        the newest can finish loading it (it stays listed meanwhile);
        `wait()` and `close()` wait it out. 0 deletes at once. Defaults to 10.
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
        validate: bool | options_lib.PublishGate = True,
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
        self._pending: concurrent.futures.Future | None = None
        # The writer of async exports, made at first use.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
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
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
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

    def _path(self, version: int) -> str:
        return self._dir.version_path(version)

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

    def _gate_inputs(self, metrics: dict, draft: dict) -> dict | None:
        """What the publish gate needs, taken now in the caller's thread:
        the rows, the model's answers and the best published metric (`draft`
        is the export info for errors)."""
        expectation = self._cache.expectation(draft)
        if expectation is None:
            return None
        requests, answers = expectation
        gate = self.options.validate
        return {
            "requests": requests,
            "answers": answers,
            "model": self._cache.graphs.model,
            "metric": gate.metric_problem(
                self.monitor, metrics, self._retainer.best_value()
            ),
        }

    def _next_version(self) -> int:
        rejected = _rejected.versions(self.export_dir)
        newest = max(self.versions() + rejected + [self._last_version])
        version = max(int(self._clock()), newest + 1)
        self._last_version = version
        return version

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
            library={
                "kerassave_callbacks": __version__,
                "tensorflow": tf.__version__,
                "keras": keras_api.adapter_for(model).version(),
            },
        )
        draft = info.to_json()  # What a failure before the version reports.
        graphs, values = self._cache.snapshot(model, draft)
        gate = self._gate_inputs(info.metrics, draft)
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
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="kerassave-export"
                )
            self._pending = self._executor.submit(write)
            return PendingExport(self._pending)
        return write().path

    @property
    def pending(self) -> PendingExport | None:
        """The async export in flight (or ended but not yet waited for).

        Example:

            exporter.export(model)  # async_export=True
            exporter.pending.result().version
        """
        return PendingExport(self._pending) if self._pending is not None else None

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
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.result()
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
                    self._check_gate(staged, info, gate)
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

    def _check_gate(
        self, staged: _files.Staging, info: layout.ExportInfo, gate: dict
    ) -> None:
        """Runs the publish gate on the staged tree; a version that fails is
        kept as `rejected-<version>` and raises.

        Raises:
          ExportRejectedError: the version failed the gate.
        """
        problems = [gate["metric"]] if gate["metric"] else []
        problems += validation.gate_problems(
            self.options.layout.root(staged.path),
            self.options.validate,
            gate["requests"],
            gate["answers"],
            gate["model"],
        )
        if not problems:
            return
        version = info.version
        _write_json(self.options.layout.info_path(staged.path), info.to_json())
        reason = {"version": version, "rejected": self._clock(), "problems": problems}
        kept = _rejected.reject(
            staged,
            self.export_dir,
            version,
            _json_bytes(reason),
            self.options.validate.keep_rejected,
        )
        logging.warning("Version %d failed the publish gate: %s", version, problems)
        where = f" It is kept at {kept} for a look." if kept else ""
        raise ExportRejectedError(
            f"Version {version} of {self.export_dir!r} failed the publish gate "
            f"and was not published: {'; '.join(problems)}.{where}",
            info=info.to_json(),
            problems=problems,
            rejected=kept,
        )

    def _commit(
        self, staged: _files.Staging, info: layout.ExportInfo
    ) -> tuple[str, layout.ExportInfo]:
        """Writes the export info and finalizes; another writer that took
        the version first makes this one take the next. Returns the path
        and the info committed."""
        info_path = self.options.layout.info_path(staged.path)
        for _ in range(_COMMIT_ATTEMPTS):
            _write_json(info_path, info.to_json())
            final = self._path(info.version)
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
        path = self.options.layout.info_path(self._path(version))
        info = export_dir_lib.read_info(self._dir.saved_model_path(version))
        if info is None:
            raise ExportError(f"Version {version} has no readable {path}.")
        info = dataclasses.replace(info, metrics={**info.metrics, **metrics})
        try:
            _files.replace_file(path, _json_bytes(info.to_json()), self._clock())
        except OSError as e:
            raise ExportError(
                f"Could not add metrics to version {version} ({path}): {e}",
                info=info.to_json(),
                committed=self._path(version),
            ) from e
        self._retainer.remember(version, info)

    def best_value(self) -> float | None:
        """The best `monitor` value recorded by the versions on disk, or None.

        Example:

            VersionedExporter("/tmp/exports", monitor="val_loss").best_value()
        """
        return self._retainer.best_value()


def _json_bytes(value) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _write_json(path: str, value) -> None:
    _fs.makedirs(posixpath.dirname(path))
    _fs.write_bytes(path, _json_bytes(value))
