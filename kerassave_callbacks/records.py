"""What an export returns or raises: `ExportRecord`, `PendingExport` and
`ExportError`."""

from __future__ import annotations

import concurrent.futures
import dataclasses


class ExportError(RuntimeError):
    """An export failed.

    Unless `committed` is set, no version directory was left for it. A failure
    after the commit (retention, an `on_commit` callback) never undoes the
    commit: `committed` names the version that stays.

    Attributes:
      info: the export info of the failed export (`epoch`, `step`,
        `metrics`; `version` once one was allocated), or None.
      committed: the path of the version committed before the failure, or
        None when nothing was committed.

    Example:

        try:
            exporter.export(model)
        except ExportError as e:
            logging.warning("No export this time: %s", e)
    """

    def __init__(
        self, message: str, *, info: dict | None = None, committed: str | None = None
    ):
        super().__init__(message)
        self.info = info
        self.committed = committed


class ExportRejectedError(ExportError):
    """A version failed the publish gate (`PublishGate`): it was not
    published, and its staged tree was kept as `rejected-<version>` (when
    `keep_rejected` allows) with its reasons.

    Attributes:
      problems: one line per failed check.
      rejected: the path of the kept copy, or None.

    Example:

        try:
            exporter.export(model)
        except ExportRejectedError as e:
            logging.warning("Not published: %s (kept at %s)", e.problems, e.rejected)
    """

    def __init__(
        self,
        message: str,
        *,
        info: dict | None = None,
        problems: list[str] = (),
        rejected: str | None = None,
    ):
        super().__init__(message, info=info)
        self.problems = list(problems)
        self.rejected = rejected


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


class PendingExport:
    """An async export in flight; `result()` waits for it to be committed.

    The version number is final only at the commit (another writer may take
    the one chosen first), so the path is known from `result()` on.

    Example:

        pending = exporter.export(model)  # async_export=True
        record = pending.result()         # blocks until committed
        tf.saved_model.load(record.path, tags=["serve"])
    """

    def __init__(self, future: concurrent.futures.Future):
        self._future = future

    def done(self) -> bool:
        """True once the export was committed or failed."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> ExportRecord:
        """The `ExportRecord` of the committed version.

        Raises:
          ExportError: the export failed.
          TimeoutError: it did not end within `timeout` seconds.
        """
        return self._future.result(timeout)

    @property
    def path(self) -> str:
        """The committed version's directory (waits for the commit)."""
        return self.result().path

    def __fspath__(self) -> str:
        return self.path


def after_commit_error(record: ExportRecord, failures: list) -> ExportError:
    """The error for what failed after `record`'s version was committed
    (retention, a subscriber): the version stays, `committed` names it."""
    return ExportError(
        f"Version {record.version} was committed to {record.path}, but then "
        + "; ".join(f"{type(e).__name__}: {e}" for e in failures),
        info=record.info,
        committed=record.path,
    )


def notify(subscriber, record: ExportRecord) -> None:
    """Tells a subscriber of commits (a callable) of `record`.

    Raises:
      ExportError: the subscriber failed; the version stays.
    """
    try:
        subscriber(record)
    except Exception as e:
        raise after_commit_error(record, [e]) from e


class AsyncWriter:
    """One background thread that writes exports, at most one in flight;
    the thread is made at the first `submit`.

    Example:

        writer = AsyncWriter()
        pending = writer.submit(write)  # write() -> ExportRecord
        writer.wait()                   # raises what write() raised
        writer.close()
    """

    def __init__(self):
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.pending: PendingExport | None = None  # Not yet waited for.

    def submit(self, write) -> PendingExport:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="kerassave-export"
            )
        self.pending = PendingExport(self._executor.submit(write))
        return self.pending

    def wait(self) -> None:
        """Waits for the export in flight.

        Raises:
          ExportError: it failed.
        """
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Stops the thread (after the export in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
