"""Trains a digits classifier and exports versions while it trains.

The main job of the README: with no flags it trains for a few epochs on
scikit-learn's bundled digits, writes versions under ./exports (the newest
3 kept, plus the best by val_accuracy) and export events for TensorBoard
under ./logs.

    python examples/train_digits.py
    python examples/train_digits.py --epochs=20 --export_dir=/models/digits \
        --exports_to_keep=5 --export_async
    python examples/train_digits.py --helpfull   # every --export_* flag
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits  # noqa: E402
import keras  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from kerassave_callbacks import define_export_flags, exporter_from_flags  # noqa: E402

_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs to train.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)

define_export_flags()
flags.FLAGS.set_default("export_log_dir", "logs")
flags.FLAGS.set_default("exports_to_keep", 3)
flags.FLAGS.set_default("export_monitor", "val_accuracy")
flags.FLAGS.set_default("export_keep_best", 1)


def train(flag_values: flags.FlagValues = flags.FLAGS) -> list[int]:
    """Trains with the flags' settings; returns the versions kept."""
    (x, y), validation = digits.load_digits()
    model = digits.build_model()
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
