"""Retention applied to an export directory: what is on disk, what the
policy drops, and the deleter that removes it after its grace period.

`retention` decides (pure); this lists, asks and hands over; `Deleter`
deletes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kerassave_callbacks import deleter as deleter_lib
from kerassave_callbacks import retention
from kerassave_callbacks.export_dir import ExportDir
from kerassave_callbacks.layout import ExportInfo
from kerassave_callbacks.options import Monitor, RetentionPolicy
from kerassave_callbacks.records import ExportError


class Retainer:
    """Keeps what a `RetentionPolicy` keeps in one export directory.

    The export info of each version is read once and cached (`remember`
    adds one just written). Not thread-safe: for the thread that exports.

    Example:

        retainer = Retainer(ExportDir("/models/digits"), RetentionPolicy(keep=3),
                            Monitor("val_loss"))
        removed, kept, failures = retainer.apply(just_written=1764070003)
        retainer.close()  # waits for the deletions, grace periods included

    Args:
      export_dir: the directory's read-only view.
      policy: what to keep.
      monitor: what `keep_best` ranks by.
      clock: returns the unix time. Defaults to `time.time`.
    """

    def __init__(
        self,
        export_dir: ExportDir,
        policy: RetentionPolicy,
        monitor: Monitor,
        clock: Callable[[], float] = time.time,
    ):
        self._dir = export_dir
        self.policy = policy
        self.monitor = monitor
        self._infos: dict[int, ExportInfo] = {}
        self.deleter = deleter_lib.Deleter(clock)

    def remember(self, version: int, info: ExportInfo) -> None:
        """Caches the export info of a version (just written or changed)."""
        self._infos[version] = info

    def known(self) -> list[retention.Candidate]:
        """What retention knows of each complete version on disk."""
        known = self._dir.for_retention(self.monitor.name, self._infos)
        listed = {v.version for v in known}
        for version in [v for v in self._infos if v not in listed]:
            del self._infos[version]
        return known

    def best_value(self) -> float | None:
        """The best monitored value among the versions on disk, or None."""
        return self.monitor.best(v.metric for v in self.known())

    def apply(self, just_written: int) -> tuple[list[int], list[int], list[Exception]]:
        """Hands what the policy drops to the deleter, each version to be
        deleted when its grace period is over.

        Returns:
          The versions dropped, the versions kept, and the errors of versions
          that could not be retired (they stay, and count as kept) or whose
          delayed deletion failed since the last pass.
        """
        known = self.known()
        due = retention.plan(known, self.policy, self.monitor, [just_written])
        doomed = list(due)
        pending = self.deleter.pending()  # Dropped by an earlier pass.
        removed, stay, failures = [], [], []
        for version in doomed:
            path = self._dir.version_path(version)
            if path in pending:
                continue
            try:
                self.deleter.delete_at(
                    path, due[version], at_most=self.policy.grace_seconds
                )
                removed.append(version)
            except (OSError, ValueError) as e:
                failures.append(
                    ExportError(f"retention could not remove version {path}: {e}")
                )
                stay.append(version)
        failures += [
            ExportError(f"retention could not remove a version: {e}")
            for e in self.deleter.take_failures()
        ]
        dropped = set(doomed) - set(stay)
        kept = sorted(v.version for v in known if v.version not in dropped)
        return removed, kept, failures

    def wait(self) -> None:
        """Returns when every deletion decided is done (grace included)."""
        self.deleter.wait()

    def close(self) -> None:
        """Waits for the deletions, then stops the deleter's thread."""
        self.deleter.close()
