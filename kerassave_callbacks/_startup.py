"""A quiet TensorFlow start for our entry points (the `kerassave` command and
the examples), not for the library: importing the package never does this.

TensorFlow 2.21 prints its C++ start-up lines (absl's notice, oneDNN, the
CUDA probe and `failed call to cuInit` on a machine without a GPU) straight
to the process's stderr, before `TF_CPP_MIN_LOG_LEVEL` takes effect for
them. So an entry point imports TensorFlow with file descriptor 2 pointed at
/dev/null, and lists the physical devices there (which probes CUDA) without
creating the runtime context, so devices can still be configured after.
Nothing is muted when the user set `TF_CPP_MIN_LOG_LEVEL` (they chose what
to see) or TensorFlow is already imported.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """Imports TensorFlow without its C++ start-up lines; returns it.

    Example:

        tf = import_tensorflow()  # first thing in a script's main
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow as tf

        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # The CUDA probe, muted too.
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
