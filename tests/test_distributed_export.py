"""export_saved_model of a model built under MirroredStrategy (2 logical CPUs,
in a subprocess: devices are fixed once TensorFlow starts): its train and
eval graphs are traced on a single-device copy, inside the scope or out."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
from kerassave_callbacks import signatures
export_saved_model(model, f"{base}/classify", signatures={
    "classify": signatures.classify()})
example = tf.train.Example(features=tf.train.Features(feature={
    "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[0]))}))
classify = tf.saved_model.load(f"{base}/classify", tags=["serve"]).signatures[
    "classify"]
scores = classify(inputs=tf.constant([example.SerializeToString()]))["scores"]
result["classify_error"] = float(np.abs(scores.numpy() - model(x[:1]).numpy()).max())
endpoint = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, 4])])
try:
    export_saved_model(model, f"{base}/endpoint", signatures={"e": endpoint})
except ValueError as e:
    result["endpoint"] = str(e)
result["written"] = sorted(os.listdir(base))
print(json.dumps(result))
"""


def test_export_of_a_mirrored_model_inside_and_outside_the_scope(tmp_path):
    result = json.loads(run_python(SCRIPT, tmp_path))

    # Its steps are traced on a single-device copy, outside any scope.
    assert result["inside"] == "exported"
    assert result["written"] == ["classify", "inside", "inside_serving", "outside"]
    assert result["train_loss_finite"]
    assert result["serving_error"] < 1e-5
    # Built-in signatures call the copy's graphs; an endpoint of the user's,
    # which calls the model itself, cannot and is refused.
    assert result["classify_error"] < 1e-5
    assert "custom endpoints ['e']" in result["endpoint"]


TWO_REPLICAS = """
import json, sys
import numpy as np
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kerassave_callbacks import export_saved_model, load_from_saved_model
base, kind = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    layers = [keras.Input((2,), name="x")]
    if kind == "batchnorm":
        layers += [keras.layers.Dense(4, name="h"),
                   keras.layers.BatchNormalization(name="bn")]
    layers.append(keras.layers.Dense(1, kernel_initializer="zeros", name="y"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
x = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 0.0], [0.0, 2.0]], "float32")
y = np.array([[1.5], [1.5], [1.0], [1.0]], "float32")
export_saved_model(model, f"{base}/export")
tf1 = []
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.load(sess, ["train"], f"{base}/export")
    sig = meta.signature_def["train"]
    feed = {sig.inputs["x"].name: x, sig.inputs["y_target"].name: y}
    for _ in range(3):
        tf1.append(float(sess.run(sig.outputs["loss"].name, feed)))
loaded = load_from_saved_model(f"{base}/export")
keras_losses, loaded_losses = [], []
for _ in range(3):
    keras_losses.append(float(model.train_on_batch(x, y)))
    loaded_losses.append(float(loaded.train_on_batch(x, y)))
print(json.dumps({"tf1": tf1, "keras": keras_losses, "loaded": loaded_losses}))
"""


@pytest.mark.parametrize("kind", ["dense", "batchnorm"])
def test_two_replica_train_graph_steps_as_keras_does(tmp_path, kind):
    # The TF1 train graph of a model built under a two-replica
    # MirroredStrategy takes the steps train_on_batch takes (not twice them).
    result = json.loads(run_python(TWO_REPLICAS, tmp_path, kind))

    np.testing.assert_allclose(result["tf1"], result["keras"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["loaded"], result["keras"], rtol=1e-5, atol=1e-6)
