"""export_saved_model of a model built under MirroredStrategy (2 logical CPUs,
in a subprocess: devices are fixed once TensorFlow starts)."""

from __future__ import annotations

import json

from helpers import run_python

SCRIPT = """
import json, os, sys
import numpy as np
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kerassave_callbacks import export_saved_model
base = sys.argv[1]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Dense(3, name="y")])
    model.compile(optimizer="adam", loss="mse")
result = {}
with strategy.scope():
    try:
        export_saved_model(model, f"{base}/inside")
        result["inside"] = "exported"
    except ValueError as e:
        result["inside"] = str(e)
    export_saved_model(model, f"{base}/inside_serving", serving_only=True)
export_saved_model(model, f"{base}/outside")  # Untrained: Adam has no slots yet.
x = np.ones((2, 4), "float32")
train = tf.saved_model.load(f"{base}/outside", tags=["train"]).signatures["train"]
out = train(x=tf.constant(x), y_target=tf.zeros([2, 3]))
served = tf.saved_model.load(f"{base}/inside_serving", tags=["serve"])
result["train_loss_finite"] = bool(np.isfinite(out["loss"].numpy()))
result["serving_error"] = float(np.abs(
    served.signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    - model(x).numpy()).max())
result["written"] = sorted(os.listdir(base))
print(json.dumps(result))
"""


def test_export_of_a_mirrored_model_inside_and_outside_the_scope(tmp_path):
    result = json.loads(run_python(SCRIPT, tmp_path))

    assert "inside `strategy.scope()`" in result["inside"]
    assert "serving_only=True" in result["inside"]
    assert result["written"] == ["inside_serving", "outside"]  # Nothing inside.
    assert result["train_loss_finite"]
    assert result["serving_error"] < 1e-5
