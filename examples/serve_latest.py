"""Loads the newest version as a server does, and predicts a few digits.

Only the `serve` graph and its `serving_default` signature are used: no
Keras, no model code.

    python examples/serve_latest.py --export_dir=exports
"""

from __future__ import annotations

import os
import sys

from kerassave_callbacks import _startup  # noqa: E402 (imports no TensorFlow)

# TensorFlow's C++ start-up lines kept off the terminal (unless you set
# TF_CPP_MIN_LOG_LEVEL): the package's helper for its own entry points.
_startup.import_tensorflow()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

_EXPORT_DIR = flags.DEFINE_string("export_dir", "exports", "Base directory.")
_SAMPLES = flags.DEFINE_integer("samples", 5, "Digits to predict.", lower_bound=1)


def predict(export_dir: str, samples: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(version path, predicted classes, true classes) of a few samples."""
    path = digits.newest_version(export_dir)
    serve = tf.saved_model.load(path, tags=["serve"]).signatures["serving_default"]
    _, (x, y) = digits.load_digits()
    (logits,) = serve(pixels=tf.constant(x[:samples])).values()
    return path, np.argmax(logits.numpy(), axis=-1), y[:samples]


def main(argv):
    del argv
    path, predicted, expected = predict(_EXPORT_DIR.value, _SAMPLES.value)
    print(f"version: {path}")
    for p, e in zip(predicted, expected, strict=True):
        print(f"predicted {p}  true {e}")


if __name__ == "__main__":
    app.run(main)
