"""One worker of a two-worker MultiWorkerMirroredStrategy cluster on loopback.

    TF_CONFIG=... python multi_worker.py EXPORT_DIR LOG_DIR

Keras 3's fit does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so this drives the callback's hooks itself,
inside the strategy's scope, as fit would on each worker; it prints whether
this worker is the chief and what it wrote.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerassave_callbacks import SavedModelExporter  # noqa: E402


def main(export_dir: str, log_dir: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0)
    exporter = SavedModelExporter(export_dir, log_dir=log_dir, serving_only=True)
    with strategy.scope():
        exporter.set_model(model)
        exporter.on_train_begin()
        exporter.on_epoch_end(0, {"loss": 1.0})
        exporter.on_train_end()
    print(
        json.dumps(
            {
                "chief": bool(strategy.extended.should_checkpoint),
                "versions": len(os.listdir(export_dir))
                if os.path.isdir(export_dir)
                else 0,
                "logs": os.path.exists(log_dir),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
