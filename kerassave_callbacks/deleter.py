"""Deletes the versions retention dropped, off the export's critical path.

A version is taken out of sight at once when its grace period is over
(`_files.retire_version`: renamed to a temporary, or its graph file removed
first on object stores), and its files are then removed in one background
thread. A version still in its grace period stays listed and servable until
its time comes, so a server that picked it as the newest can finish loading
it.
"""

from __future__ import annotations

import concurrent.futures
import posixpath
import threading
import time
from collections.abc import Callable

from absl import logging

from kerassave_callbacks import _files, layout


def delete_version(path: str, now: float) -> None:
    """Retires the version at `path`, then removes its files; a version a
    link points to now (the user pinned it since retention decided) stays.

    Raises:
      ValueError: `path` is a symbolic link (never deleted).
      OSError: it could not be retired; it stays.
    """
    parent, name = posixpath.split(path)
    if layout.version_name(name) in _files.linked_versions(parent):
        logging.info("Not deleting %s: a link in %s pins it now.", path, parent)
        return
    retired = _files.retire_version(path, now)
    if retired is not None:
        _files.remove_tree(retired)


class Deleter:
    """One background thread that deletes versions, each at its time.

    Not thread-safe: `retire_now`, `delete_at`, `wait` and `close` are for
    the thread that exports.

    Example:

        deleter = Deleter(time.time)
        deleter.delete_at("/models/digits/1764070001", time.time() + 10, at_most=10)
        deleter.wait()  # returns once it is deleted, about 10 s later
        deleter.close()

    Args:
      clock: returns the unix time (the clock deletion times are in).
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._failures: list[Exception] = []
        self._lock = threading.Lock()

    def pending(self) -> set[str]:
        """The paths waiting to be deleted (or being deleted)."""
        with self._lock:
            return {p for p, f in self._pending.items() if not f.done()}

    def retire_now(self, path: str) -> None:
        """Takes the version out of sight now; removes its files later.

        Raises:
          ValueError, OSError: as `delete_version`.
        """
        retired = _files.retire_version(path, self._clock())
        if retired is not None:
            self._submit(retired, _files.remove_tree, retired)

    def delete_at(self, path: str, when: float, *, at_most: float) -> None:
        """Deletes the version at `path` at unix time `when` (at once when it
        has passed), but no more than `at_most` seconds from now (a clock
        that jumped); it stays listed and servable until then."""
        if path in self.pending():
            return
        delay = min(when - self._clock(), at_most)
        if delay <= 0:
            self.retire_now(path)
            return
        self._submit(path, self._delete_after, path, time.monotonic() + delay)

    def _delete_after(self, path: str, deadline: float) -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        try:
            delete_version(path, self._clock())
        except (OSError, ValueError) as e:
            logging.warning(
                "Retention could not delete %s (the next pass retries): %s", path, e
            )
            with self._lock:
                self._failures.append(e)

    def take_failures(self) -> list[Exception]:
        """The errors of delayed deletions since the last call (each such
        version stays, and the next retention pass tries again)."""
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _submit(self, key: str, fn, *args) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="kerassave-delete"
            )
        future = self._pool.submit(fn, *args)
        with self._lock:
            self._pending = {p: f for p, f in self._pending.items() if not f.done()}
            self._pending[key] = future

    def wait(self) -> None:
        """Returns when every deletion asked for is done, grace periods
        waited out."""
        with self._lock:
            futures = list(self._pending.values())
        concurrent.futures.wait(futures)

    def close(self) -> None:
        """Waits for every deletion, then stops the thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
