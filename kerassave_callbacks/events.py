"""Export events in TensorBoard, written with TF2 summaries.

Tags (a contract with dashboards and with the tests): scalars
`export/duration_seconds`, `export/size_bytes`, `export/versions_kept`
(each with its unit as the chart's description); text `export/event` for
each export, `export/error` for a failed one and `export/rejected` for a
version the publish gate refused; and `export/record`, the JSON the Exports
dashboard reads.

Scalars are float32, the only dtype TensorBoard's default loader shows. So
there is no `export/version` scalar: float32 cannot hold a version number
(about 1.8e9 charts to the nearest 128); the text event and the dashboard
name the exact version. The writer is made at the first event (no event
file before), flushed after each, and closed at the end of training. An
event that cannot be written (the log directory is unwritable for a while)
is kept and written at its own step by the next write that succeeds.
"""

from __future__ import annotations

import json
import os
import posixpath
import threading

import tensorflow as tf
from absl import logging
from tensorboard.compat.proto import summary_pb2

from kerassave_callbacks import fields
from kerassave_callbacks.records import ExportRejectedError

DURATION = "export/duration_seconds"
SIZE = "export/size_bytes"
VERSIONS_KEPT = "export/versions_kept"
EVENT = "export/event"
ERROR = "export/error"
REJECTED = "export/rejected"
RUN = "export"
# One JSON record per export (or failure) for the Exports dashboard
# (tensorboard_plugin.py): a tensor summary of that plugin, whose data marks
# a run as having exports.
RECORD = "export/record"
PLUGIN_NAME = "kerassave_exports"
# The fields of a record, each with its type (read through `fields.read`).
RECORD_FIELDS = {
    "status": fields.text,  # "committed", "failed" or "rejected"
    "version": fields.count,
    "path": fields.text,
    "export_dir": fields.text,
    "created": fields.unix_time,
    "epoch": fields.count,
    "step": fields.count,
    "metrics": fields.metrics,
    "monitor": fields.text,
    "mode": fields.text,
    "duration_seconds": fields.number,
    "size_bytes": fields.count,
    "removed": fields.counts,
    "error": fields.text,
}
# Events kept while the writer fails; the oldest are dropped beyond this.
_MAX_BACKLOG = 100


def describe(record, monitor: str | None = None) -> str:
    """The one-line text of an export event: the exact version, its absolute
    path, the epochs completed (as Keras prints `Epoch n/N`), the monitored metric
    to 4 significant digits, and the versions retention removed."""
    info = record.info
    parts = [f"Exported version {record.version} to {_absolute(record.path)}"]
    epoch = info.get("epoch")
    parts.append(f"epoch {epoch}" if epoch is not None else "no epoch")
    if monitor:
        value = (info.get("metrics") or {}).get(monitor)
        parts.append(f"{monitor}={value:.4g}" if value is not None else f"{monitor}=-")
    parts.append(f"removed versions {record.removed}")
    return "; ".join(parts)


def progress_line(record, monitor: str | None = None) -> str:
    """The line `verbose=1` prints for an export, after Keras' epoch line:
    the epoch (epochs completed, as Keras prints it) or step, the version
    and its path, the duration, the monitored value if any, and the versions
    retention removed, if any."""
    info = record.info
    epoch, step = info.get("epoch"), info.get("step")
    when = f"Epoch {epoch}" if epoch is not None else f"Step {step}"
    line = (
        f"{when}: exported version {record.version} to {record.path} in "
        f"{record.duration_seconds:.2f}s"
    )
    value = (info.get("metrics") or {}).get(monitor) if monitor else None
    if value is not None:
        line += f"; {monitor}={value:.4g}"
    if record.removed:
        line += "; removed " + ", ".join(map(str, record.removed))
    return line


class ExportEvents:
    """Writes export events under `<log_dir>/export`: a subscriber of
    commits (`committed`) and of failures (`failed`).

    Example:

        events = ExportEvents("/tmp/logs", monitor=Monitor("val_loss"))
        events.committed(record)  # record: an ExportRecord
        events.close()

    Args:
      log_dir: the TensorBoard log directory.
      monitor: the `Monitor` whose metric the events and the dashboard
        show. Defaults to None.
    """

    def __init__(self, log_dir: str, monitor=None):
        self.log_dir = posixpath.join(str(log_dir), RUN)
        self._monitor = monitor
        self._writer = None
        self._lock = threading.Lock()  # Any thread may write.
        self._backlog: list[tuple[int, dict, dict]] = []  # Not written yet.

    def _write(self, step: int, scalars: dict, texts: dict) -> None:
        """Writes one event, after any that failed before.

        Raises:
          tf.errors.OpError: the writer failed; the event stays in the
            backlog for the next write.
        """
        with self._lock:
            self._backlog = self._backlog[-_MAX_BACKLOG + 1 :]
            self._backlog.append((step, scalars, texts))
            try:
                if self._writer is None:
                    self._writer = tf.summary.create_file_writer(self.log_dir)
                with self._writer.as_default():
                    while self._backlog:
                        _write_event(*self._backlog[0])
                        self._backlog.pop(0)
                self._writer.flush()
            except Exception:
                self._writer = None  # Made anew by the next write.
                raise

    def committed(self, record) -> None:
        """Writes the scalars, the text line and the dashboard record of one
        committed export (an `ExportRecord`), at its step."""
        info = record.info
        step = info.get("step") or 0
        monitor = self._monitor.name if self._monitor else None
        mode = self._monitor.direction if self._monitor else "min"
        path = _absolute(record.path)
        fields = {
            "status": "committed",
            "version": record.version,
            "path": path,
            "export_dir": posixpath.dirname(path),
            "created": info.get("created"),
            "epoch": info.get("epoch"),
            "step": info.get("step"),
            "metrics": info.get("metrics") or {},
            "monitor": monitor,
            "mode": mode,
            "duration_seconds": record.duration_seconds,
            "size_bytes": record.size_bytes,
            "removed": record.removed,
        }
        self._write(
            step,
            {
                DURATION: float(record.duration_seconds),
                SIZE: float(record.size_bytes),
                VERSIONS_KEPT: float(len(record.kept)),
            },
            {EVENT: describe(record, monitor), RECORD: json.dumps(fields)},
        )

    def failed(self, error) -> None:
        """Writes, at the step of the export it belongs to (an async export
        fails after the next one started), `export/rejected` for a version
        the publish gate refused (an `ExportRejectedError`), else
        `export/error`, each with its dashboard record. A writer that fails
        is logged; the event is kept for the next write."""
        info = error.info or {}
        step, epoch = info.get("step") or 0, info.get("epoch")
        rejected = isinstance(error, ExportRejectedError)
        fields = {"status": "failed", "error": str(error), "step": step, "epoch": epoch}
        if rejected:
            fields.update(
                status="rejected",
                version=info.get("version"),
                path=_absolute(error.rejected) if error.rejected else None,
                error="; ".join(error.problems),
                metrics=info.get("metrics") or {},
            )
        tag = REJECTED if rejected else ERROR
        try:
            self._write(step, {}, {tag: str(error), RECORD: json.dumps(fields)})
        except Exception as e:  # The writer itself may be what failed.
            logging.warning(
                "Could not write %s to TensorBoard yet (kept for the next event): %s",
                tag,
                e,
            )

    def close(self) -> None:
        """Closes the writer; events that could not be written are dropped."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


# What each chart counts, shown as its description.
_UNITS = {
    DURATION: "Seconds from the call of export() to the end of retention.",
    SIZE: "Bytes of the version directory.",
    VERSIONS_KEPT: "Versions on disk after retention.",
}


def _write_event(step: int, scalars: dict, texts: dict) -> None:
    for tag, value in scalars.items():
        tf.summary.scalar(tag, value, step=step, description=_UNITS[tag])  # float32
    for tag, value in texts.items():
        if tag == RECORD:
            tf.summary.write(tag, tf.constant(value), step=step, metadata=_RECORD_META)
        else:
            tf.summary.text(tag, value, step=step)


_RECORD_META = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME),
    data_class=summary_pb2.DATA_CLASS_TENSOR,
)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
