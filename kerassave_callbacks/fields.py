"""Typed reading of the JSON the project writes and later reads back.

`export_info.json` and the dashboard's export records are read through
`read`: each field is checked for its type, and a field that fails reads as
missing (None, or an empty container), with a warning naming the file and
the field. A reader never raises from deep inside on what it found on disk,
however an operator's directory looks after months.

A leaf: no TensorFlow, no Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from absl import logging

# Unix times outside this range (before 1970, after 9999-12-31) are not the
# time anything was written, and break every date formatter.
MAX_TIME = 253402300799.0


class BadField(ValueError):
    """A field's value is not of the type it must have; the message says
    what it must be."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count(value) -> int:
    """An integer >= 0 (a version, an epoch, a step, a size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadField("an integer >= 0")


def number(value) -> float:
    """A finite number."""
    if _is_number(value) and math.isfinite(value):
        return float(value)
    raise BadField("a finite number")


def unix_time(value) -> float:
    """A unix time between 1970 and 9999."""
    if _is_number(value) and 0 <= value <= MAX_TIME:
        return float(value)
    raise BadField(f"a unix time between 0 and {MAX_TIME:.0f}")


def text(value) -> str:
    """A string."""
    if isinstance(value, str):
        return value
    raise BadField("a string")


def texts(value) -> list[str]:
    """A list of strings."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadField("a list of strings")


def counts(value) -> list[int]:
    """A list of integers >= 0 (versions)."""
    if isinstance(value, list):
        try:
            return [count(v) for v in value]
        except BadField:
            pass
    raise BadField("a list of integers >= 0")


def text_map(value) -> dict[str, str]:
    """An object of strings to strings."""
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise BadField("an object of strings")


def metrics(value) -> dict[str, float | None]:
    """An object of metric name -> number or null. A non-finite value is
    recorded as null; one of another type reads as null (`bad_metrics`
    names them)."""
    if not isinstance(value, dict):
        raise BadField("an object of metric name -> number")
    return {
        str(name): float(v) if _is_number(v) and math.isfinite(v) else None
        for name, v in value.items()
    }


def bad_metrics(value) -> list[str]:
    """The metrics of a `metrics` object whose value is neither a number nor
    null."""
    if not isinstance(value, dict):
        return []
    return [str(k) for k, v in value.items() if v is not None and not _is_number(v)]


def names(value) -> dict[str, dict[str, str]]:
    """{"inputs"|"outputs": {Keras name: signature key}}."""
    if isinstance(value, dict) and all(
        group in ("inputs", "outputs") and isinstance(pairs, dict)
        for group, pairs in value.items()
    ):
        return {group: text_map(pairs) for group, pairs in value.items()}
    raise BadField('{"inputs"|"outputs": {Keras name: signature key}}')


Check = Callable[[object], object]


def check(value, schema: dict[str, Check]) -> tuple[dict, list[str]]:
    """The fields of `schema` in the JSON object `value`, each checked, and
    one line per field that failed (read as None).

    A missing field or null reads as None; keys outside `schema` are
    dropped; `value` that is no object reads as all None.

    Example:

        check({"epoch": "3"}, {"epoch": count})
        # ({"epoch": None}, ["field 'epoch' is '3', not an integer >= 0"])
    """
    if not isinstance(value, dict):
        return dict.fromkeys(schema), [
            f"it holds a JSON {type(value).__name__}, not an object"
        ]
    row, problems = {}, []
    for field, checked in schema.items():
        raw = value.get(field)
        row[field] = None
        if raw is None:
            continue
        try:
            row[field] = checked(raw)
        except (BadField, TypeError) as e:
            problems.append(f"field {field!r} is {raw!r:.80}, not {e}")
    if "metrics" in schema:
        problems += [
            f"metric {name!r} is not a number"
            for name in bad_metrics(value.get("metrics"))
        ]
    return row, problems


def read(value, schema: dict[str, Check], source: str) -> dict:
    """`check`, with a warning naming `source` for each field that failed:
    what every reader of the JSON this project writes runs.

    Example:

        read({"epoch": "3"}, {"epoch": count}, "export_info.json")
        # {"epoch": None}, and a warning: field 'epoch' is '3', not ...
    """
    row, problems = check(value, schema)
    for problem in problems:
        logging.warning("%s: %s; it is read as missing.", source, problem)
    return row
