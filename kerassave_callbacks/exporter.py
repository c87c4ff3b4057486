"""VersionedExporter: integer-versioned SavedModels under one export_dir."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import posixpath
import time
from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

from kerassave_callbacks import _files, retention
from kerassave_callbacks._version import __version__
from kerassave_callbacks.core import export as core_export
from kerassave_callbacks.core import mode_graphs

EXPORT_INFO = posixpath.join("assets.extra", "export_info.json")
_COMMIT_ATTEMPTS = 20


class ExportError(RuntimeError):
    """An export failed; no version directory was left for it.

    Example:

        try:
            exporter.export(model)
        except ExportError as e:
            logging.warning("No export this time: %s", e)
    """


@dataclasses.dataclass(frozen=True)
class ExportRecord:
    """What one committed export did.

    Attributes:
      version: the integer version written.
      path: its directory.
      info: the contents of its `assets.extra/export_info.json`.
      duration_seconds: from the call of `export()` to the end of retention.
      size_bytes: the bytes of the version directory.
      removed: the versions retention deleted after it.
      kept: the versions on disk after retention.

    Example:

        def on_commit(record: ExportRecord):
            print(record.version, record.size_bytes, record.removed)

        VersionedExporter("/tmp/exports", on_commit=on_commit).export(model)
    """

    version: int
    path: str
    info: dict
    duration_seconds: float
    size_bytes: int
    removed: list[int]
    kept: list[int]


def check_count(name: str, value, *, allow_none: bool) -> None:
    """Validates a positive-integer argument such as `keep`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise TypeError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r} "
            f"of type {type(value).__name__}. Expected {expected}."
        )
    if value < 1:
        hint = " (None keeps every version)" if allow_none else ""
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value}. "
            f"Expected an integer >= 1{hint}."
        )


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected one of {list(choices)}."
        )


def check_hours(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            "Invalid value for argument `keep_every_n_hours`. Received: "
            f"keep_every_n_hours={value!r}. Expected a positive number or None."
        )
    if not value > 0 or math.isinf(value):
        raise ValueError(
            "Invalid value for argument `keep_every_n_hours`. Received: "
            f"keep_every_n_hours={value}. Expected a positive finite number."
        )


def check_export_dir(export_dir) -> str:
    """Returns `export_dir` as a str; refuses a file or an unwritable place."""
    if not isinstance(export_dir, (str, os.PathLike)):
        raise TypeError(
            f"`export_dir` must be a path. Received: export_dir={export_dir!r}."
        )
    export_dir = os.fspath(export_dir).rstrip("/") or "/"
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
        raise ValueError(
            f"export_dir={export_dir!r} is an existing file. Pass a directory "
            "(it is created if missing)."
        )
    if _files.is_local(export_dir):
        ancestor = os.path.abspath(export_dir.removeprefix("file://"))
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise ValueError(
                f"export_dir={export_dir!r} cannot be created: {ancestor!r} is a "
                "file. Pass a directory path."
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise PermissionError(
                f"export_dir={export_dir!r} is not writable: no write permission "
                f"on {ancestor!r}. Pass a directory you can write to."
            )
    return export_dir


def check_arguments(
    export_dir, keep, keep_best, monitor, mode, keep_every_n_hours
) -> str:
    """Validates the exporter's arguments; returns `export_dir` as a str.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
      PermissionError: `export_dir` cannot be written.
    """
    check_count("keep", keep, allow_none=True)
    check_count("keep_best", keep_best, allow_none=True)
    check_choice("mode", mode, retention.MODES)
    check_hours(keep_every_n_hours)
    if keep_best is not None and not monitor:
        raise ValueError(
            f"`keep_best={keep_best}` needs `monitor`, the metric to rank "
            "versions by. Pass e.g. monitor='val_loss'."
        )
    return check_export_dir(export_dir)


def _model_key(model: keras.Model) -> tuple:
    """Changes whenever cached graphs of `model` would be wrong."""
    optimizer = getattr(model, "optimizer", None)
    return (
        id(model),
        tuple(id(v.value) for v in model.variables),
        tuple(id(v) for v in model.trainable_variables),
        id(optimizer),
        tuple(id(v) for v in optimizer.variables) if optimizer is not None else (),
        tuple(id(v) for v in model.metrics_variables),
        bool(getattr(model, "compiled", False)),
    )


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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

    Example:

        exporter = VersionedExporter("/tmp/exports", keep=3)
        for epoch in range(10):
            model.fit(x, y, epochs=1)
            exporter.export(model, epoch=epoch)
        exporter.versions()  # the three newest, e.g. [1764070003, ...]

    Args:
      export_dir: the base directory TF Serving polls (`--model_base_path`);
        any `tf.io.gfile` path.
      keep: how many of the newest versions to keep; None keeps all.
        Defaults to 5.
      keep_best: also keep this many best versions by `monitor`. Defaults
        to None.
      monitor: the metric name in `export(metrics=...)` that `keep_best`
        ranks by. Defaults to None.
      mode: "min", "max" or "auto" (max for accuracy-like names). Defaults
        to "auto".
      keep_every_n_hours: also keep one version per this many hours.
        Defaults to None.
      serving_only: write only the `serve` graph. Defaults to False.
      input_signature: passed to `export_saved_model`. Defaults to None.
      custom_objects: passed to `export_saved_model`. Defaults to None.
      as_text: write `saved_model.pbtxt`. Defaults to False.
      target_signature: passed to `export_saved_model`. Defaults to None.
      async_export: return from `export()` once the variables are
        snapshot and write in a background thread; `wait()` blocks until it
        is committed. At most one export is in flight. Defaults to False.
      on_commit: called with an `ExportRecord` after each committed export
        (in the writing thread). Defaults to None.
      clock: returns the unix time; for tests. Defaults to `time.time`.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
      PermissionError: `export_dir` cannot be written.
    """

    def __init__(
        self,
        export_dir: str,
        keep: int | None = 5,
        *,
        keep_best: int | None = None,
        monitor: str | None = None,
        mode: str = "auto",
        keep_every_n_hours: float | None = None,
        serving_only: bool = False,
        input_signature=None,
        custom_objects: dict | None = None,
        as_text: bool = False,
        target_signature=None,
        async_export: bool = False,
        on_commit: Callable[[ExportRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.export_dir = check_arguments(
            export_dir, keep, keep_best, monitor, mode, keep_every_n_hours
        )
        self.monitor = monitor
        self.policy = retention.Policy(
            keep=keep,
            keep_best=keep_best,
            mode=retention.resolve_mode(mode, monitor),
            keep_every_n_hours=keep_every_n_hours,
        )
        self._graph_options = dict(
            input_signature=input_signature,
            serving_only=serving_only,
            target_signature=target_signature,
        )
        del custom_objects  # Exports serialize configs; loading takes these.
        self.as_text = as_text
        self.async_export = async_export
        self.on_commit = on_commit
        self._clock = clock
        self._graphs: mode_graphs.ModeGraphs | None = None
        self._graphs_key: tuple | None = None
        self._last_version = 0
        self._infos: dict[int, dict] = {}
        self._pending: concurrent.futures.Future | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Retired versions are deleted off the export's critical path.
        self._deleter = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="kerassave-delete"
        )
        self._deletions: list[concurrent.futures.Future] = []
        self.cleanup()

    # Listing and cleanup.

    def versions(self) -> list[int]:
        """The complete versions on disk, oldest first.

        Example:

            VersionedExporter("/tmp/exports").versions()  # [1764070001, ...]
        """
        return _files.complete_versions(self.export_dir)

    def _path(self, version: int) -> str:
        return posixpath.join(self.export_dir, str(version))

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
        now = self._clock()
        removed = []
        copies = not _files.renames_atomically(self.export_dir)
        for name in _files.entries(self.export_dir):
            path = posixpath.join(self.export_dir, name)
            version = _files.version_name(name)
            if _files.temp_is_abandoned(name, now) or (
                copies
                and version is not None
                and now - version > _files.STALE_SECONDS
                and not _files.has_graph(path)
            ):
                logging.info("Removing the leftover of a crashed export: %s", path)
                _files.remove_tree(path)
                removed.append(path)
        return removed

    # Exporting.

    def _graphs_for(self, model: keras.Model) -> mode_graphs.ModeGraphs:
        if self._graphs is None or self._graphs_key != _model_key(model):
            if self._graphs is not None:
                logging.info("The model changed since the last export: retracing.")
            self._graphs = mode_graphs.ModeGraphs(model, **self._graph_options)
            self._graphs_key = _model_key(model)
        return self._graphs

    def _next_version(self) -> int:
        newest = max(self.versions() + [self._last_version])
        version = max(int(self._clock()), newest + 1)
        self._last_version = version
        return version

    def export(
        self,
        model: keras.Model,
        *,
        epoch: int | None = None,
        step: int | None = None,
        metrics: dict | None = None,
    ) -> str:
        """Exports `model` as a new version; returns the version's path.

        Example:

            path = exporter.export(model, epoch=3, metrics={"val_loss": 0.2})
            tf.saved_model.load(path, tags=["serve"])

        Args:
          model: the `keras.Model` to export.
          epoch: recorded in export_info.json (0-based). Defaults to None.
          step: recorded in export_info.json (optimizer iterations).
            Defaults to None.
          metrics: name -> value, recorded and used by `keep_best`.
            Defaults to None.

        Returns:
          The path of the version directory (with `async_export`, the path
          it is being committed to).

        Raises:
          ExportError: the export (or, with `async_export`, the previous
            one) failed; no version directory was left for it.
        """
        started = time.monotonic()
        core_export.check_model(model)
        self.wait()
        graphs = self._graphs_for(model)
        first = not graphs.serialized
        values = graphs.snapshot()
        version = self._next_version()
        info = {
            "version": version,
            "epoch": epoch,
            "step": step,
            "metrics": {str(k): _finite_or_none(v) for k, v in (metrics or {}).items()},
            "created": self._clock(),
            "library": {
                "kerassave_callbacks": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        }
        write = lambda: self._write(graphs, values, info, started)  # noqa: E731
        if self.async_export and not first:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="kerassave-export"
                )
            self._pending = self._executor.submit(write)
            return self._path(version)
        return write().path

    def wait(self) -> None:
        """Blocks until the pending async export is committed, and retention's
        deletions are done.

        Example:

            exporter.export(model)  # async_export=True: returns at once
            exporter.wait()         # the version is on disk now

        Raises:
          ExportError: that export failed.
        """
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.result()
        finally:
            deletions, self._deletions = self._deletions, []
            concurrent.futures.wait(deletions)

    def _write(self, graphs, values, info: dict, started: float) -> ExportRecord:
        temp = posixpath.join(self.export_dir, _files.temp_name(self._clock()))
        try:
            tf.io.gfile.makedirs(self.export_dir)
            graphs.write(temp, values, as_text=self.as_text)
            path = self._commit(temp, info)
        except Exception as e:
            if tf.io.gfile.isdir(temp):
                _files.remove_tree(temp)
            raise ExportError(
                f"Export of version {info['version']} to {self.export_dir!r} "
                f"failed: {e}. No version directory was left for it."
            ) from e
        self._infos[info["version"]] = info
        removed, kept = self._apply_retention(info["version"])
        record = ExportRecord(
            version=info["version"],
            path=path,
            info=info,
            duration_seconds=time.monotonic() - started,
            size_bytes=_files.dir_size(path),
            removed=removed,
            kept=kept,
        )
        logging.info(
            "Exported version %d to %s in %.2fs",
            record.version,
            path,
            record.duration_seconds,
        )
        if self.on_commit is not None:
            self.on_commit(record)
        return record

    def _commit(self, temp: str, info: dict) -> str:
        info_path = posixpath.join(temp, EXPORT_INFO)
        _write_json(info_path, info)
        if _files.is_local(temp):
            _files.fsync_tree(temp)
        for _ in range(_COMMIT_ATTEMPTS):
            final = self._path(info["version"])
            try:
                _files.commit(temp, final)
                return final
            except FileExistsError:
                # Another writer took this version: take the next one.
                info["version"] = self._next_version()
                _write_json(info_path, info)
                if _files.is_local(temp):
                    _files.fsync_tree(posixpath.dirname(info_path))
        raise FileExistsError(
            f"Could not find a free version name in {self.export_dir!r} after "
            f"{_COMMIT_ATTEMPTS} attempts."
        )

    def best_value(self) -> float | None:
        """The best `monitor` value recorded by the versions on disk, or None.

        Example:

            VersionedExporter("/tmp/exports", monitor="val_loss").best_value()
        """
        values = [v.metric for v in self._known_versions() if v.metric is not None]
        if not values:
            return None
        return max(values) if self.policy.mode == "max" else min(values)

    # Retention.

    def _info(self, version: int) -> dict:
        if version not in self._infos:
            path = posixpath.join(self._path(version), EXPORT_INFO)
            try:
                with tf.io.gfile.GFile(path, "r") as f:
                    self._infos[version] = json.loads(f.read())
            except (tf.errors.NotFoundError, ValueError):
                self._infos[version] = {}
        return self._infos[version]

    def _known_versions(self) -> list[retention.Version]:
        known = []
        for version in self.versions():
            info = self._info(version)
            metric = (info.get("metrics") or {}).get(self.monitor)
            known.append(
                retention.Version(
                    version,
                    created=float(info.get("created") or version),
                    metric=_finite_or_none(metric),
                )
            )
        return known

    def _apply_retention(self, just_written: int) -> tuple[list[int], list[int]]:
        """Retires what the policy drops; returns (removed, kept) versions."""
        known = self._known_versions()
        doomed = retention.versions_to_delete(known, self.policy, [just_written])
        for version in doomed:
            retired = _files.retire_version(self._path(version), self._clock())
            if retired is not None:
                self._deletions = [f for f in self._deletions if not f.done()]
                self._deletions.append(
                    self._deleter.submit(_files.remove_tree, retired)
                )
            self._infos.pop(version, None)
        gone = set(doomed)
        return doomed, sorted(v.version for v in known if v.version not in gone)


def _write_json(path: str, value) -> None:
    tf.io.gfile.makedirs(posixpath.dirname(path))
    mode_graphs.write_file(path, json.dumps(value, indent=2, sort_keys=True))
