"""Trains a small classifier on scikit-learn's bundled digits and exports it.

python examples/train_digits.py --epochs=3
"""

from __future__ import annotations

import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs to train.", lower_bound=1)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", "exports/digits", "Where the SavedModel is written."
)


def load_digits():
    """The 8x8 digits images (bundled with scikit-learn), split 80/20."""
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    split = int(len(x) * 0.8)
    return (x[:split], y[:split]), (x[split:], y[split:])


def build_model():
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


def train(epochs: int, export_dir: str) -> str:
    from kerassave_callbacks import export_saved_model

    (x, y), (x_val, y_val) = load_digits()
    model = build_model()
    model.fit(x, y, epochs=epochs, validation_data=(x_val, y_val), verbose=2)
    import time

    path = os.path.join(export_dir, str(int(time.time())))
    export_saved_model(model, path)
    logging.info("Exported to %s", path)
    return path


def main(argv):
    del argv
    train(_EPOCHS.value, _EXPORT_DIR.value)


if __name__ == "__main__":
    app.run(main)
