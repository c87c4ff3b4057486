"""The digits data set and model the example binaries share.

scikit-learn ships the 8x8 digits images, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def load_digits(validation_fraction: float = 0.2):
    """((x, y), (x_val, y_val)): pixels scaled to [0, 1], int64 labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    y = y.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(len(x) * (1.0 - validation_fraction))
    return (x[:split], y[:split]), (x[split:], y[split:])


def build_model(keras=None):
    """A small classifier: 64 pixels -> 10 logits, compiled with Adam.

    Args:
      keras: the Keras module to build it with: `keras` (Keras 3, the
        default) or `tf_keras` (Keras 2).
    """
    if keras is None:
        import keras

    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits",
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def newest_version(export_dir: str) -> str:
    """The path of the newest complete version under `export_dir`."""
    names = tf.io.gfile.listdir(export_dir) if tf.io.gfile.isdir(export_dir) else []
    versions = [
        int(name.rstrip("/"))
        for name in names
        if name.rstrip("/").isdigit()
        and tf.io.gfile.exists(f"{export_dir}/{name.rstrip('/')}/saved_model.pb")
    ]
    if not versions:
        raise FileNotFoundError(
            f"No version under export_dir={export_dir!r}. Run "
            "examples/train_digits.py first, or pass --export_dir."
        )
    return f"{export_dir.rstrip('/')}/{max(versions)}"
