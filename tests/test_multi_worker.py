"""Multi-worker training: only the chief writes; Keras 3 is refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from kerassave_callbacks import load_from_saved_model
from kerassave_callbacks.core import loader

from helpers import assert_close, cluster_configs, events, run_python, run_tf1


def test_only_the_chief_writes_in_tf_keras_fit(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "multi_worker.py")
    workers = []
    for index, config in enumerate(cluster_configs(2)):
        env = dict(os.environ, TF_CONFIG=config)
        args = [str(tmp_path / f"exports_{index}"), str(tmp_path / f"logs_{index}")]
        workers.append(
            subprocess.Popen(
                [sys.executable, script, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=240)
            assert worker.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            worker.kill()

    chief, other = results
    assert chief["chief"] and not other["chief"]
    # The chief kept the newest two of its three epoch exports.
    assert len(chief["versions"]) == 2 and chief["logs"]
    assert not other["export_dir"] and not other["logs"]
    # Both trained the same model; the newest version serves it.
    assert_close(chief["predictions"], other["predictions"], atol=1e-6)
    newest = tmp_path / "exports_0" / max(chief["versions"], key=int)
    served = tf.saved_model.load(str(newest), tags=["serve"])
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4)
    out = served.signatures["serving_default"](x=tf.constant(x))["y"]
    assert_close(out, chief["predictions"], atol=1e-6)
    # With its train and eval graphs, traced on a single-device copy, and
    # the optimizer state of the trained model.
    saved = loader.read_saved_model(str(newest))
    tags = sorted(tag for m in saved.meta_graphs for tag in m.meta_info_def.tags)
    assert tags == ["eval", "serve", "train"]
    loaded = load_from_saved_model(str(newest))
    assert int(loaded.optimizer.iterations) == chief["iterations"] == 12
    y = np.stack([x.sum(axis=1), x[:, 0] - x[:, 3]], axis=1)
    (trained,) = run_tf1(str(newest), "train", "train", {"x": x, "y_target": y})
    assert_close(trained["loss"], loaded.train_on_batch(x, y)[0], atol=1e-5)
    steps = [
        e.step
        for e in events(tmp_path / "logs_0" / "export").Tensors(
            "export/duration_seconds"
        )
    ]
    assert steps == [4, 8, 12]


def test_a_keras_3_model_under_multi_worker_strategy_is_refused(tmp_path):
    out = run_python(
        "import sys, numpy as np, tensorflow as tf, keras\n"
        "from kerassave_callbacks import SavedModelExporter\n"
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()\n"
        "with strategy.scope():\n"
        "    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        "    m.compile(optimizer='adam', loss='mse')\n"
        "cb = SavedModelExporter(sys.argv[1])\n"
        "cb.set_model(m)\n"
        "try:\n"
        "    with strategy.scope():\n"
        "        cb.on_train_begin()\n"
        "except ValueError as e:\n"
        "    print(repr(str(e)))\n",
        tmp_path / "exports",
    )
    assert "MultiWorkerMirroredStrategy" in out and "tf_keras" in out
    assert not (tmp_path / "exports").exists()


def test_a_distributed_model_that_cannot_be_rebuilt_exports_its_serve_graph(
    tmp_path,
):
    """The train and eval graphs of a distributed tf_keras model are traced
    on a copy rebuilt from its config; a model whose loss is a local
    function cannot be rebuilt, and gets the serve graph with a warning."""
    out = run_python(
        "import sys, numpy as np, tensorflow as tf, tf_keras\n"
        "from kerassave_callbacks import export_saved_model\n"
        "from kerassave_callbacks.core import loader\n"
        "def local_loss(y, p):\n"
        "    return tf.reduce_mean(tf.abs(y - p))\n"
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()\n"
        "with strategy.scope():\n"
        "    layers = [tf_keras.Input((2,)), tf_keras.layers.Dense(1)]\n"
        "    m = tf_keras.Sequential(layers)\n"
        "    m.compile(optimizer='adam', loss=local_loss)\n"
        "    m.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)\n"
        "    export_saved_model(m, sys.argv[1])\n"
        "saved = loader.read_saved_model(sys.argv[1])\n"
        "print([list(g.meta_info_def.tags) for g in saved.meta_graphs])\n",
        tmp_path / "export",
    )
    assert out == "[['serve']]"
