"""Keeps TensorFlow's INFO lines that our own calls cause out of the log.

Tracing and `tf.saved_model.save` log INFO lines (`signature_serialization`,
`functional_saver`, `Writing fingerprint to ...`) through the `absl` and
`tensorflow` loggers that say nothing to a user who asked for an export, and
the v1 loader that `kerassave verify` runs (as TF Serving loads) warns that
it is deprecated, which is about our call, not the user's code. Inside
`quiet()` those loggers drop records below WARNING, and TF's deprecation
warnings, that do not come from this package, in this thread only; outside
it, and in every other thread, TensorFlow logs at whatever level the user
set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where TF logs "... is deprecated and will be removed" from.
_DEPRECATION = os.path.join("tensorflow", "python", "util", "deprecation.py")
_LOGGERS = ("absl", "tensorflow")
_state = threading.local()


class _DropTheirInfoInOurCalls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_state, "depth", 0):
            return True
        path = os.path.abspath(record.pathname)
        if path.endswith(_DEPRECATION):
            return False
        return record.levelno >= logging.WARNING or path.startswith(_PACKAGE_DIR)


_FILTER = _DropTheirInfoInOurCalls()


@contextlib.contextmanager
def quiet():
    """Drops other code's INFO records, and TF's deprecation warnings, of
    this thread while inside."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
