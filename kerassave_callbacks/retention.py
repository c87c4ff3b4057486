"""Which versions to keep: a pure function, no file system.

The exporter lists the versions on disk with their `export_info.json`, asks
`versions_to_delete`, and deletes what it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from absl import logging

from kerassave_callbacks.layout import ExportInfo
from kerassave_callbacks.options import Monitor, RetentionPolicy

_NO_MONITOR = Monitor()


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One version on disk as retention weighs it: only what the policy
    reads (`export_dir.Version` is the full row that `kerassave list` shows).

    Attributes:
      version: the integer name of the version directory.
      created: unix time the version was written (from export_info.json).
      metric: the monitored metric's value, or None when it was not logged.
      pinned: never deleted and not counted by the policy (a symbolic link
        the user put in `export_dir`, or a version such a link points to).
      info: its whole export info, for rules that read more (epoch, step,
        other metrics).
    """

    version: int
    created: float
    metric: float | None = None
    pinned: bool = False
    info: ExportInfo = ExportInfo()


def best_versions(
    versions: Iterable[Candidate], count: int, monitor: Monitor
) -> list[int]:
    """The `count` best versions by metric, best first; ties go to the newer.

    NaN and missing metrics are never best; pinned versions are not ranked.

    Example:

        versions = [Candidate(1, 0.0, 0.5), Candidate(2, 1.0, 0.2)]
        best_versions(versions, 1, Monitor("val_loss"))  # [2]
    """
    ranked = monitor.ranked((v.version, v.metric) for v in versions if not v.pinned)
    return ranked[:count]


class Rule(Protocol):
    """One reason to keep versions. A policy keeps what any of its rules
    keeps (and always the pinned ones); a new rule is one class.

    Example:

        @dataclasses.dataclass(frozen=True)
        class KeepEvenEpochs:
            def keeps(self, versions, monitor):
                return {v.version for v in versions if v.info.epoch % 2 == 0}

        RetentionPolicy(keep=1, rules=[KeepEvenEpochs()])
    """

    def keeps(self, versions: Sequence[Candidate], monitor: Monitor) -> set[int]:
        """The versions (integer names) of `versions` this rule keeps; the
        pinned ones are not among `versions`."""


@dataclasses.dataclass(frozen=True)
class KeepNewest:
    """The newest `count` versions."""

    count: int

    def keeps(self, versions, monitor) -> set[int]:
        return set(sorted((v.version for v in versions), reverse=True)[: self.count])


@dataclasses.dataclass(frozen=True)
class KeepBest:
    """The best `count` versions by the monitor."""

    count: int

    def keeps(self, versions, monitor) -> set[int]:
        return set(best_versions(versions, self.count, monitor))


@dataclasses.dataclass(frozen=True)
class KeepEveryNHours:
    """One version per `hours`: the oldest, then each one at least that long
    after the last one so kept (as `tf.train.CheckpointManager` does)."""

    hours: float

    def keeps(self, versions, monitor) -> set[int]:
        kept: set[int] = set()
        anchor = None
        for v in sorted(versions, key=lambda v: (v.created, v.version)):
            if anchor is None or v.created - anchor >= self.hours * 3600.0:
                kept.add(v.version)
                anchor = v.created
        return kept


def rules(policy: RetentionPolicy) -> tuple[Rule, ...]:
    """The rules of a policy: its fields as rules, then its own `rules`."""
    built = [KeepNewest(policy.keep)]
    if policy.keep_best:
        built.append(KeepBest(policy.keep_best))
    if policy.keep_every_n_hours:
        built.append(KeepEveryNHours(policy.keep_every_n_hours))
    return (*built, *policy.rules)


def versions_to_keep(
    versions: Iterable[Candidate], policy: RetentionPolicy, monitor: Monitor
) -> set[int]:
    """The versions `policy` keeps, by integer name (pinned ones always)."""
    versions = list(versions)
    kept = {v.version for v in versions if v.pinned}
    versions = [v for v in versions if not v.pinned]
    if policy.keep is None:
        return kept | {v.version for v in versions}
    for rule in rules(policy):
        kept |= set(rule.keeps(versions, monitor))
    return kept


def versions_to_delete(
    versions: Iterable[Candidate],
    policy: RetentionPolicy,
    monitor: Monitor = _NO_MONITOR,
    protected: Iterable[int] = (),
) -> list[int]:
    """The versions to delete, oldest first; never one in `protected`.

    Example:

        versions = [Candidate(1, created=0.0), Candidate(2, 1.0), Candidate(3, 2.0)]
        versions_to_delete(versions, RetentionPolicy(keep=2), protected=[3])  # [1]
    """
    versions = list(versions)
    kept = versions_to_keep(versions, policy, monitor) | set(protected)
    doomed = sorted(v.version for v in versions if v.version not in kept)
    for version in doomed:
        logging.vlog(1, "Retention removes version %d (policy %s)", version, policy)
    return doomed


def deletion_times(
    versions: Iterable[Candidate], doomed: Iterable[int], grace_seconds: float
) -> dict[int, float]:
    """When each doomed version may be deleted (unix time): `grace_seconds`
    after it was superseded, i.e. after the next newer version was created,
    so that a server that picked it as the newest can finish loading it.

    Example:

        versions = [Candidate(1, created=0.0), Candidate(2, created=5.0)]
        deletion_times(versions, [1], grace_seconds=10.0)  # {1: 15.0}
    """
    by_version = sorted(versions, key=lambda v: v.version)
    times = {}
    for version in doomed:
        newer = [v.created for v in by_version if v.version > version]
        superseded = min(newer) if newer else float("-inf")
        times[version] = superseded + grace_seconds
    return times


def plan(
    versions: Iterable[Candidate],
    policy: RetentionPolicy,
    monitor: Monitor = _NO_MONITOR,
    protected: Iterable[int] = (),
) -> dict[int, float]:
    """Retention as the exporter applies it and `kerassave prune` too: each
    version to delete (oldest first) -> when it may be deleted (unix time).

    Example:

        versions = [Candidate(1, created=0.0), Candidate(2, created=5.0)]
        plan(versions, RetentionPolicy(keep=1, grace_seconds=10.0))  # {1: 15.0}
    """
    versions = list(versions)
    doomed = versions_to_delete(versions, policy, monitor, protected)
    return deletion_times(versions, doomed, policy.grace_seconds)
