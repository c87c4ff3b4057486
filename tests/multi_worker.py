"""One worker of a two-worker MultiWorkerMirroredStrategy cluster on loopback.

    TF_CONFIG=... python multi_worker.py EXPORT_DIR LOG_DIR

Trains a tf_keras model with `fit(callbacks=[SavedModelExporter(...)])`
under the strategy and prints, as JSON on its last line, whether this worker
is the chief, what it wrote and what its model predicts after `fit`.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from kerassave_callbacks import SavedModelExporter  # noqa: E402

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4)
Y = np.stack([X.sum(axis=1), X[:, 0] - X[:, 3]], axis=1)


def main(export_dir: str, log_dir: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        tf_keras.utils.set_random_seed(1)
        model = tf_keras.Sequential(
            [tf_keras.Input((4,), name="x"), tf_keras.layers.Dense(2, name="y")]
        )
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    data = tf.data.Dataset.from_tensor_slices((X, Y)).repeat().batch(4)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    exporter = SavedModelExporter(export_dir, keep=2, log_dir=log_dir)
    model.fit(
        data.with_options(options),
        epochs=3,
        steps_per_epoch=4,
        verbose=0,
        callbacks=[exporter],
    )
    exporter.close()
    print(
        json.dumps(
            {
                "chief": bool(strategy.extended.should_checkpoint),
                "export_dir": os.path.exists(export_dir),
                "versions": sorted(os.listdir(export_dir))
                if os.path.isdir(export_dir)
                else [],
                "logs": os.path.exists(log_dir),
                "predictions": model.predict(X, verbose=0).tolist(),
                "iterations": int(model.optimizer.iterations.numpy()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
