"""Export events in TensorBoard, written with TF2 summaries.

Tags (a contract with dashboards and with the tests):
scalars `export/duration_seconds`, `export/size_bytes`, `export/versions_kept`,
`export/version`; text `export/event` for each export and `export/error` for
a failed one. The writer is made at the first event (no event file before),
flushed after each, and closed at the end of training.
"""

from __future__ import annotations

import posixpath
import threading

import tensorflow as tf
from tensorboard.plugins.scalar import metadata as scalar_metadata

DURATION = "export/duration_seconds"
SIZE = "export/size_bytes"
VERSIONS_KEPT = "export/versions_kept"
VERSION = "export/version"
EVENT = "export/event"
ERROR = "export/error"
RUN = "export"


def describe(record, monitor: str | None = None) -> str:
    """The one-line text of an export event."""
    info = record.info
    parts = [f"Exported version {record.version} to {record.path}"]
    parts.append(f"epoch {info.get('epoch')}")
    if monitor:
        parts.append(f"{monitor}={(info.get('metrics') or {}).get(monitor)}")
    parts.append(f"removed versions {record.removed}")
    return "; ".join(parts)


class ExportEvents:
    """Writes export events under `<log_dir>/export`.

    Example:

        events = ExportEvents("/tmp/logs")
        events.record(record, step=100)  # record: an ExportRecord
        events.close()
    """

    def __init__(self, log_dir: str):
        self.log_dir = posixpath.join(str(log_dir), RUN)
        self._writer = None
        self._lock = threading.Lock()  # Records come from the export thread too.

    def _write(self, step: int, scalars: dict, texts: dict) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                for tag, value in scalars.items():
                    # float64: tf.summary.scalar's float32 would round versions
                    # (about 1.8e9) to a multiple of 128.
                    tf.summary.write(
                        tag,
                        tf.constant(value, tf.float64),
                        step=step,
                        metadata=scalar_metadata.create_summary_metadata(tag, ""),
                    )
                for tag, value in texts.items():
                    tf.summary.text(tag, value, step=step)
            self._writer.flush()

    def record(self, record, step: int, monitor: str | None = None) -> None:
        """Writes the scalars and the text line of one committed export."""
        self._write(
            step,
            {
                DURATION: float(record.duration_seconds),
                SIZE: float(record.size_bytes),
                VERSIONS_KEPT: float(len(record.kept)),
                VERSION: float(record.version),
            },
            {EVENT: describe(record, monitor)},
        )

    def error(self, message: str, step: int) -> None:
        """Writes `export/error` for a failed export."""
        self._write(step, {}, {ERROR: message})

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
