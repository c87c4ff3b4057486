"""Multi-worker training: only the chief writes; Keras 3 is refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from helpers import assert_close, cluster_configs, events, run_python


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
