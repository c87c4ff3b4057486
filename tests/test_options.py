"""Options as values: Monitor decides "better" once; each value validates
itself in its constructor."""

from __future__ import annotations

import math

import pytest

from kerassave_callbacks.options import (
    ExportOptions,
    Monitor,
    RetentionPolicy,
    value_of,
)

DIRECTIONS = {
    "val_loss": ("val_loss", "auto", "min"),
    "custom_loss": ("my_loss", "auto", "min"),
    "accuracy": ("val_accuracy", "auto", "max"),
    "auc": ("auc", "auto", "max"),
    "mean_squared_error": ("val_mean_squared_error", "auto", "min"),
    "sparse_categorical_accuracy": ("sparse_categorical_accuracy", "auto", "max"),
    "unknown_is_min": ("score", "auto", "min"),
    "explicit_max": ("score", "max", "max"),
}


@pytest.mark.parametrize("name,mode,direction", DIRECTIONS.values(), ids=DIRECTIONS)
def test_auto_direction(name, mode, direction):
    assert Monitor(name, mode).direction == direction


BETTER = {
    # (mode, min_delta, value, best) -> better?
    "min_lower": (("min", 0.0, 0.4, 0.5), True),
    "min_equal": (("min", 0.0, 0.5, 0.5), False),
    "max_higher": (("max", 0.0, 0.6, 0.5), True),
    "within_min_delta": (("min", 0.1, 0.45, 0.5), False),
    "beyond_min_delta": (("min", 0.1, 0.35, 0.5), True),
    "anything_beats_none": (("max", 0.0, -1.0, None), True),
    "nan_never": (("min", 0.0, math.nan, 0.5), False),
    "none_never": (("min", 0.0, None, None), False),
}


@pytest.mark.parametrize("args,expected", BETTER.values(), ids=BETTER)
def test_better(args, expected):
    mode, min_delta, value, best = args
    assert Monitor("m", mode, min_delta).better(value, best) is expected


def test_best_and_value_skip_missing_and_nan():
    monitor = Monitor("val_acc", "auto")
    assert monitor.best([0.2, None, math.nan, 0.7, 0.5]) == 0.7
    assert monitor.value({"val_acc": "0.25"}) == 0.25
    assert monitor.value({"loss": 1.0}) is None
    assert Monitor(None).value({"loss": 1.0}) is None


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: Monitor("m", "up"), ValueError, "mode='up'"),
        (lambda: Monitor(3), TypeError, "monitor=3"),
        (lambda: Monitor("m", min_delta=-1), ValueError, "min_delta=-1"),
        (lambda: RetentionPolicy(keep=0), ValueError, "keep=0"),
        (lambda: RetentionPolicy(keep_best=True), TypeError, "keep_best=True"),
        (lambda: RetentionPolicy(keep_every_n_hours=0), ValueError, "hours=0"),
        (lambda: RetentionPolicy(grace_seconds=-1), ValueError, "grace_seconds=-1"),
        (lambda: RetentionPolicy(grace_seconds="5"), TypeError, "grace_seconds='5'"),
        (
            lambda: RetentionPolicy(keep_best=1).check_monitor(Monitor()),
            ValueError,
            "needs `monitor`",
        ),
    ],
)
def test_bad_values_name_the_argument(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_a_value_or_its_keywords_not_both():
    policy = RetentionPolicy(keep=2)
    keywords = dict(keep=5, keep_best=None, keep_every_n_hours=None, grace_seconds=10.0)
    assert value_of("retention", policy, RetentionPolicy, keywords) is policy
    assert value_of("retention", None, RetentionPolicy, keywords) == RetentionPolicy()
    with pytest.raises(TypeError, match=r"either `retention=` or \['keep'\]"):
        value_of("retention", policy, RetentionPolicy, {**keywords, "keep": 3})
    with pytest.raises(TypeError, match="must be of type ExportOptions"):
        value_of("options", policy, ExportOptions, {})


@pytest.mark.parametrize(
    "mode, pairs, expected",
    [
        ("min", [(1, 0.3), (2, 0.1), (3, 0.3)], [2, 3, 1]),
        ("max", [(1, 0.3), (2, 0.1), (3, None), (4, math.nan)], [1, 2]),
        ("min", [], []),
    ],
    ids=["ties_go_to_the_newer", "missing_and_nan_left_out", "empty"],
)
def test_ranked_best_first(mode, pairs, expected):
    assert Monitor("m", mode).ranked(pairs) == expected
