"""Trains a digits classifier and exports versions while it trains.

The main job of the README: with no flags it trains for a few epochs on
scikit-learn's bundled digits, writes versions under ./exports (the newest
3 kept, plus the best by val_accuracy) and export events for TensorBoard
under ./logs.

    python examples/train_digits.py
    python examples/train_digits.py --epochs=20 --export_dir=/models/digits \
        --exports_to_keep=5 --export_async
    python examples/train_digits.py --keras=2    # the same with tf_keras
    python examples/train_digits.py --helpfull   # every --export_* flag

With `--keras=2` and `TF_CONFIG` set it trains under
`MultiWorkerMirroredStrategy`, one process per worker; only the chief
exports (see the README for a two-worker launch on one machine).
"""

from __future__ import annotations

import importlib
import os
import sys

from kerassave_callbacks import _startup  # noqa: E402 (imports no TensorFlow)

# TensorFlow's C++ start-up lines kept off the terminal (unless you set
# TF_CPP_MIN_LOG_LEVEL): the package's helper for its own entry points.
_startup.import_tensorflow()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from kerassave_callbacks import define_export_flags, exporter_from_flags  # noqa: E402

_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs to train.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)
_KERAS = flags.DEFINE_enum(
    "keras",
    "3",
    ["3", "2"],
    "The Keras to train with: 3 (keras) or 2 (tf_keras, the tf_keras extra; "
    "multi-worker when TF_CONFIG is set).",
)

define_export_flags()
flags.FLAGS.set_default("export_log_dir", "logs")
flags.FLAGS.set_default("exports_to_keep", 3)
flags.FLAGS.set_default("export_monitor", "val_accuracy")
flags.FLAGS.set_default("export_keep_best", 1)


def _strategy(flag_values: flags.FlagValues) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster."""
    if not os.environ.get("TF_CONFIG"):
        return tf.distribute.get_strategy()
    if flag_values.keras != "2":
        raise app.UsageError(
            "TF_CONFIG is set, but Keras 3's fit does not run under "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585). Pass "
            "--keras=2 to train multi-worker with tf_keras."
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def train(flag_values: flags.FlagValues = flags.FLAGS) -> list[int]:
    """Trains with the flags' settings; returns the versions kept."""
    keras = importlib.import_module("tf_keras" if flag_values.keras == "2" else "keras")
    (x, y), validation = digits.load_digits()
    with _strategy(flag_values).scope():
        model = digits.build_model(keras)
    # A few validation rows become TF Serving warm-up requests in every
    # version (assets.extra/tf_serving_warmup_requests).
    exporter = exporter_from_flags(
        flag_values, verbose=1, warmup_inputs=validation[0][:4]
    )
    callbacks = [exporter]
    if flag_values.export_log_dir:
        callbacks.append(keras.callbacks.TensorBoard(flag_values.export_log_dir))
    model.fit(
        x,
        y,
        epochs=flag_values.epochs,
        batch_size=flag_values.batch_size,
        validation_data=validation,
        callbacks=callbacks,
        verbose=2,
    )
    versions = exporter.versions()
    logging.info("Versions in %s: %s", flag_values.export_dir, versions)
    return versions


def main(argv):
    del argv
    train()


if __name__ == "__main__":
    app.run(main)
