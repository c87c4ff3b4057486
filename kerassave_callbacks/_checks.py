"""Checks of arguments, each error naming the argument, echoing the value
and saying what is expected (as Keras words them). A leaf.
"""

from __future__ import annotations

import math


def check_count(
    name: str, value, none_means: str | None = None, *, minimum: int = 1
) -> None:
    """Validates an integer argument such as `keep`: at least `minimum`.

    `none_means` says what None does for this argument; without it, None is
    refused.

    Raises:
      TypeError: not an integer (or None where allowed).
      ValueError: below `minimum`.
    """
    if value is None and none_means:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "a positive integer" if minimum == 1 else "an integer"
        expected += " or None" if none_means else ""
        raise TypeError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r} "
            f"of type {type(value).__name__}. Expected {expected}."
        )
    if value < minimum:
        hint = f" (None {none_means})" if none_means else ""
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value}. "
            f"Expected an integer >= {minimum}{hint}."
        )


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected one of {list(choices)}."
        )


def check_seconds(name: str, value, *, positive: bool = False) -> None:
    """Validates a finite number of seconds (or hours): >= 0, or > 0 when
    `positive`.

    Raises:
      TypeError: not a number.
      ValueError: negative (or zero when `positive`), or not finite.
    """
    expected = "a positive finite number" if positive else "a finite number >= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r} "
            f"of type {type(value).__name__}. Expected {expected}."
        )
    too_small = value <= 0 if positive else value < 0
    if too_small or not math.isfinite(value):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value}. "
            f"Expected {expected}."
        )
