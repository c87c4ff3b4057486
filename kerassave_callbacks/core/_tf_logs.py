"""Keeps TensorFlow's INFO lines that our own calls cause out of the log.

Tracing and `tf.saved_model.save` log INFO lines (`signature_serialization`,
`functional_saver`, `Writing fingerprint to ...`) through the `absl` and
`tensorflow` loggers that say nothing to a user who asked for an export.
Inside `quiet()` those loggers drop records below WARNING that do not come
from this package, in this thread only; outside it, and in every other
thread, TensorFlow logs at whatever level the user set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOGGERS = ("absl", "tensorflow")
_state = threading.local()


class _DropTheirInfoInOurCalls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or not getattr(_state, "depth", 0)
            or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)
        )


_FILTER = _DropTheirInfoInOurCalls()


@contextlib.contextmanager
def quiet():
    """Drops other code's INFO records of this thread while inside."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
