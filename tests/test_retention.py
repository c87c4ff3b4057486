"""Retention as a pure function: tables of versions and policies."""

from __future__ import annotations

import math

import pytest

from kerassave_callbacks.options import Monitor, RetentionPolicy
from kerassave_callbacks.retention import Candidate, deletion_times, versions_to_delete

HOUR = 3600.0


def _v(n: int, metric=None, created=None) -> Candidate:
    return Candidate(n, created=float(n) if created is None else created, metric=metric)


TEN = [_v(n) for n in range(1, 11)]

CASES = {
    "keep_newest_3": (
        TEN,
        (RetentionPolicy(keep=3), Monitor()),
        [],
        [1, 2, 3, 4, 5, 6, 7],
    ),
    "keep_none_deletes_nothing": (TEN, (RetentionPolicy(keep=None), Monitor()), [], []),
    "fewer_than_keep": (TEN[:2], (RetentionPolicy(keep=5), Monitor()), [], []),
    "keep_1_protects_just_written_older": (
        TEN[:3],
        (RetentionPolicy(keep=1), Monitor()),
        [2],
        [1],
    ),
    "best_2_min": (
        [_v(1, 0.5), _v(2, 0.1), _v(3, 0.9), _v(4, 0.2), _v(5, 0.8)],
        (RetentionPolicy(keep=1, keep_best=2), Monitor("m", "min")),
        [],
        [1, 3],
    ),
    "best_1_max": (
        [_v(1, 0.5), _v(2, 0.1), _v(3, 0.9), _v(4, 0.2)],
        (RetentionPolicy(keep=1, keep_best=1), Monitor("m", "max")),
        [],
        [1, 2],
    ),
    "nan_and_missing_never_best": (
        [_v(1, math.nan), _v(2, None), _v(3, 5.0), _v(4, 7.0)],
        (RetentionPolicy(keep=1, keep_best=2), Monitor("m", "min")),
        [],
        [1, 2],
    ),
    "best_tie_goes_to_newer": (
        [_v(1, 0.3), _v(2, 0.3), _v(3, 0.9)],
        (RetentionPolicy(keep=1, keep_best=1), Monitor("m", "min")),
        [],
        [1],
    ),
    "every_2_hours": (
        [_v(n, created=n * 0.5 * HOUR) for n in range(1, 10)],
        (RetentionPolicy(keep=1, keep_every_n_hours=2), Monitor()),
        [],
        [2, 3, 4, 6, 7, 8],
    ),
}


@pytest.mark.parametrize(
    "versions, policy, protected, expected", CASES.values(), ids=CASES.keys()
)
def test_versions_to_delete(versions, policy, protected, expected):
    policy, monitor = policy
    assert versions_to_delete(versions, policy, monitor, protected) == expected


def test_order_of_input_does_not_matter():
    shuffled = [TEN[i] for i in (4, 0, 9, 2, 7, 1, 8, 3, 6, 5)]
    assert versions_to_delete(shuffled, RetentionPolicy(keep=2)) == list(range(1, 9))


GRACE = {
    "next_newer_created_plus_grace": ([1, 2, 3], [1, 2], 10.0, {1: 30.0, 2: 40.0}),
    "no_grace_at_its_superseding": ([1, 2, 3], [1], 0.0, {1: 20.0}),
    "superseded_by_the_nearest_newer": ([1, 5, 9], [1, 5], 1.0, {1: 51.0, 5: 91.0}),
}


@pytest.mark.parametrize("versions,doomed,grace,expected", GRACE.values(), ids=GRACE)
def test_deletion_times(versions, doomed, grace, expected):
    known = [Candidate(v, created=10.0 * v) for v in reversed(versions)]
    assert deletion_times(known, doomed, grace) == expected
