"""Faithful round trips: what is loaded or trained from an export behaves like
the model that wrote it, for the model kinds users have."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    SavedModelExporter,
    export_saved_model,
    layout,
    load_from_saved_model,
)

from conftest import ConfigurableDoubler, classifier, classifier_data, two_tower
from helpers import assert_close, run_python, run_tf1, serve_tf2, value_bytes

RNG = np.random.default_rng(3)
N = 16


@keras.saving.register_keras_serializable(package="round_trips")
class Scale(keras.layers.Layer):
    """A custom layer with a weight of its own."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="round_trips")
def scaled_mse(y_true, y_pred):
    return 2.0 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def _dense_net(*layers, optimizer="adam", loss="mse"):
    model = keras.Sequential(
        [keras.Input((4,), name="x"), *layers, keras.layers.Dense(2)]
    )
    model.compile(optimizer=optimizer, loss=loss)
    x = RNG.normal(size=(N, 4)).astype("float32")
    y = RNG.normal(size=(N, 2)).astype("float32")
    out = model.layers[-1].name
    return model, x, y, {"x": x, f"{out}_target": y}


def _dict_io():
    model = two_tower(dict_io=True)
    a = RNG.normal(size=(N, 3)).astype("float32")
    b = RNG.normal(size=(N, 2)).astype("float32")
    score = RNG.normal(size=(N, 1)).astype("float32")
    label = np.eye(2, dtype="float32")[RNG.integers(0, 2, N)]
    x, y = {"a": a, "b": b}, {"score": score, "label": label}
    return model, x, y, {"a": a, "b": b, "score_target": score, "label_target": label}


def _subclassed():
    model = ConfigurableDoubler()
    x = RNG.normal(size=(N, 4)).astype("float32")
    y = RNG.normal(size=(N, 2)).astype("float32")
    model(x)
    model.compile(optimizer="adam", loss="mse")
    return model, x, y, {"inputs": x, "output_0_target": y}


def _custom_layer_and_loss():
    return _dense_net(Scale(), keras.layers.Dense(3), loss=scaled_mse)


def _embedding_lstm():
    inputs = keras.Input((5,), dtype="int32", name="ids")
    h = keras.layers.Embedding(20, 4)(inputs)
    h = keras.layers.LSTM(3)(h)
    outputs = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = RNG.integers(0, 20, size=(N, 5)).astype("int32")
    y = RNG.normal(size=(N, 1)).astype("float32")
    return model, x, y, {"ids": x, "out_target": y}


def _batchnorm():
    return _dense_net(keras.layers.Dense(6), keras.layers.BatchNormalization())


def _dropout():
    return _dense_net(keras.layers.Dense(6), keras.layers.Dropout(0.5))


def _schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5)
    return _dense_net(keras.layers.Dense(6), optimizer=keras.optimizers.Adam(schedule))


def _clipnorm():
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, clipnorm=0.5)
    return _dense_net(keras.layers.Dense(6), optimizer=optimizer)


def _ema():
    optimizer = keras.optimizers.Adam(0.05, use_ema=True, ema_overwrite_frequency=3)
    return _dense_net(keras.layers.Dense(6), optimizer=optimizer)


def _regularizers():
    dense = keras.layers.Dense(
        6,
        kernel_regularizer=keras.regularizers.L2(0.1),
        activity_regularizer=keras.regularizers.L1(0.01),
    )
    return _dense_net(dense)


def _application():
    # A keras.applications model (weights=None: nothing is downloaded):
    # BatchNormalization in every block, 262 variables.
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = RNG.normal(size=(N, 32, 32, 3)).astype("float32")
    y = RNG.integers(0, 3, size=(N,))
    (name,) = [t.name for t in model.inputs]
    return model, x, y, {name: x, "predictions_target": y}


ZOO = {
    # Also served exactly from its weights alone (merged, being slow).
    "application": (_application, {"serves_exactly": True}),
    "dict_io": (_dict_io, {}),
    "subclassed": (_subclassed, {}),
    "custom_layer_and_loss": (_custom_layer_and_loss, {}),
    "embedding_lstm": (_embedding_lstm, {}),
    "batchnorm": (_batchnorm, {}),
    "dropout": (_dropout, {"random_training": True}),
    "lr_schedule": (_schedule, {}),
    "clipnorm": (_clipnorm, {}),
    "ema": (_ema, {}),
    "regularizers": (_regularizers, {}),
    "as_text": (_batchnorm, {"as_text": True}),
}


def _flat(values) -> list[np.ndarray]:
    return [np.asarray(v) for v in tf.nest.flatten(values)]


@pytest.mark.parametrize("make, options", ZOO.values(), ids=ZOO.keys())
def test_round_trip(make, options, tmp_path):
    model, x, y, feeds = make()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path, as_text=options.get("as_text", False))

    loaded = load_from_saved_model(path)

    for got, want in zip(
        _flat(loaded.predict(x, verbose=0)),
        _flat(model.predict(x, verbose=0)),
        strict=True,
    ):
        assert_close(got, want, atol=1e-6)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 4
    for got, want in zip(
        loaded.optimizer.variables, model.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    if options.get("serves_exactly"):
        _assert_serves_exactly_with_only_its_weights(model, x, path)
    if options.get("random_training"):
        return  # Dropout draws other masks in the graph than in Keras.
    # The train signature from the export's state against train_on_batch
    # of the model loaded from the same export.
    runs = run_tf1(path, "train", "train", feeds, runs=3)
    keras_losses = []
    for _ in range(3):
        loaded.reset_metrics()
        keras_losses.append(loaded.train_on_batch(x, y, return_dict=True)["loss"])
    assert_close([r["loss"] for r in runs], keras_losses, atol=1e-5)


def _assert_serves_exactly_with_only_its_weights(model, x, path) -> None:
    expected = model.predict(x, verbose=0)
    (name,) = [t.name for t in model.inputs]
    (tf1,) = run_tf1(path, "serve", "serving_default", {name: x})
    assert_close(tf1["predictions"], expected)
    assert_close(serve_tf2(path, {name: x})["predictions"], expected)
    # The serve graph holds the weights, with their values, and nothing else.
    served = tf.saved_model.load(path, tags=["serve"]).variables
    assert value_bytes(served) == value_bytes(model.weights)


# Silent wrong results.


def test_adapted_preprocessing_layers_round_trip_exactly(tmp_path):
    raw = RNG.normal(loc=7.0, scale=3.0, size=(64, 4)).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(raw)
    bins = keras.layers.Discretization(num_bins=4)
    bins.adapt(raw[:, :1])
    inputs = keras.Input((4,), name="x")
    bucket = keras.ops.cast(bins(inputs[:, :1]), "float32")
    merged = keras.layers.Concatenate()([norm(inputs), bucket])
    model = keras.Model(inputs, keras.layers.Dense(2)(merged))
    model.compile("adam", "mse")
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    loaded = load_from_saved_model(path)

    np.testing.assert_array_equal(
        loaded.predict(raw, verbose=0), model.predict(raw, verbose=0)
    )


def test_ema_weights_are_what_the_newest_version_serves(tmp_path):
    x, y = classifier_data()
    model = classifier(compiled=False)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05, use_ema=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    exporter = SavedModelExporter(str(tmp_path), keep=None)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[exporter])

    newest = os.path.join(tmp_path, str(exporter.versions()[-1]))
    np.testing.assert_allclose(
        serve_tf2(newest, {"features": x})["logits"],
        model.predict(x, verbose=0),
        atol=1e-6,
    )


class OwnStep(keras.Model):
    """Trains only its head, with its own train_step."""

    def __init__(self):
        super().__init__()
        self.body = keras.layers.Dense(4)
        self.head = keras.layers.Dense(1)

    def call(self, x):
        return self.head(self.body(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = 10.0 * self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        weights = self.head.trainable_variables
        self.optimizer.apply(tape.gradient(loss, weights), weights)
        return {"loss": loss}


def test_a_model_with_its_own_train_step_is_refused_unless_serving_only(tmp_path):
    x = RNG.normal(size=(N, 3)).astype("float32")
    model = OwnStep()
    model.compile("sgd", "mse")
    model.fit(x, x[:, :1], epochs=1, verbose=0)

    with pytest.raises(
        ValueError, match="overrides `train_step` in OwnStep.*serving_only=True"
    ):
        export_saved_model(model, str(tmp_path / "full"))
    assert not (tmp_path / "full").exists()
    export_saved_model(model, str(tmp_path / "serve"), serving_only=True)
    served = serve_tf2(str(tmp_path / "serve"), {"inputs": x})["output_0"]
    assert_close(served, model.predict(x, verbose=0))


# Loud failures that should work.

MIXED = """
import json, sys
import numpy as np
import keras
from kerassave_callbacks import export_saved_model, load_from_saved_model
path, policy = sys.argv[1], sys.argv[2]
keras.mixed_precision.set_global_policy("mixed_float16")
inputs = keras.Input((4,), name="x")
hidden = keras.layers.Dense(8)(inputs)
model = keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(hidden))
model.compile("adam", "mse")
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
model.fit(x, x[:, :2], epochs=2, batch_size=8, verbose=0)
export_saved_model(model, path)
keras.mixed_precision.set_global_policy(policy)
loaded = load_from_saved_model(path)
print(json.dumps({
    "optimizer": type(loaded.optimizer).__name__,
    "scale": [float(model.optimizer.dynamic_scale),
              float(loaded.optimizer.dynamic_scale)],
    "steps": [int(model.optimizer.step_counter),
              int(loaded.optimizer.step_counter)],
    "error": float(np.abs(loaded.predict(x, verbose=0)
                          - model.predict(x, verbose=0)).max()),
}))
"""


@pytest.mark.parametrize("policy", ["mixed_float16", "float32"])
def test_mixed_precision_loads_with_its_loss_scale_state(policy, tmp_path):
    result = json.loads(run_python(MIXED, tmp_path / "export", policy))
    assert result["optimizer"] == "LossScaleOptimizer"
    assert result["scale"][0] == result["scale"][1]
    assert result["steps"][0] == result["steps"][1]
    assert result["error"] == 0.0


UNSAFE = """
import sys
import keras
from kerassave_callbacks import export_saved_model, load_from_saved_model
inputs = keras.Input((4,), name="x")
model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 3.0)(inputs))
export_saved_model(model, sys.argv[1])
keras.config.enable_unsafe_deserialization()
loaded = load_from_saved_model(sys.argv[1])
print(type(loaded.layers[-1]).__name__)
"""


def test_enable_unsafe_deserialization_is_honoured(tmp_path):
    assert run_python(UNSAFE, tmp_path / "export") == "Lambda"


def test_dict_output_keys_with_slashes(tmp_path):
    # (Keras' own fit refuses a space in an output key: its metric scopes.)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8)(inputs)
    outputs = {
        "class/id": keras.layers.Dense(3)(hidden),
        "score/raw": keras.layers.Dense(1)(hidden),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="adam",
        loss={
            "class/id": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "score/raw": "mse",
        },
    )
    x, ids = classifier_data()
    score = RNG.normal(size=(len(x), 1)).astype("float32")
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    train = tf.saved_model.load(path, tags=["train"]).signatures["train"]
    specs = train.structured_input_signature[1]
    assert specs["class_id_target"].dtype == tf.int64
    assert specs["class_id_target"].shape.as_list() == [None]
    out = train(
        x=tf.constant(x),
        class_id_target=tf.constant(ids),
        score_raw_target=tf.constant(score),
    )
    model.reset_metrics()
    expected = model.train_on_batch(
        x, {"class/id": ids, "score/raw": score}, return_dict=True
    )["loss"]
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)


# Damaged or foreign exports are refused, naming the path and the damage.


def _truncate(path, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


DAMAGE = {
    "empty_graph": (
        lambda p: _write(f"{p}/saved_model.pb", b""),
        r"saved_model.pb \(0 bytes\) holds no graph",
    ),
    "cut_short_graph": (
        lambda p: _truncate(f"{p}/saved_model.pb"),
        r"saved_model.pb \(\d+ bytes\) cannot be parsed",
    ),
    "garbage_graph": (
        lambda p: _write(f"{p}/saved_model.pb", b"\xff\x00garbage" * 64),
        r"saved_model.pb \(\d+ bytes\) cannot be parsed",
    ),
    "cut_short_variables": (
        lambda p: _truncate(f"{p}/variables/variables.data-00000-of-00001", 0.3),
        "in its variables cannot be read",
    ),
    "no_variables_index": (
        lambda p: os.remove(f"{p}/variables/variables.index"),
        "its variables .* cannot be read",
    ),
    "no_variables": (
        lambda p: tf.io.gfile.rmtree(f"{p}/variables"),
        "its variables .* cannot be read",
    ),
    "corrupt_json": (
        lambda p: _write(f"{p}/assets/saved_model.json", b'{"class_name": '),
        "saved_model.json is not valid JSON",
    ),
}


@pytest.mark.parametrize("damage, expected", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_export_is_refused(damage, expected, tmp_path):
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    damage(path)

    with pytest.raises(ValueError, match=f"{path}' is damaged: .*{expected}"):
        load_from_saved_model(path)


def _plain_module(path):
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([2])])
    tf.saved_model.save(module, path)


def _keras_export(path):
    classifier().export(path, verbose=False)


@pytest.mark.parametrize("write", [_plain_module, _keras_export])
def test_a_foreign_saved_model_is_named_as_such(write, tmp_path):
    path = str(tmp_path / "foreign")
    write(path)
    with pytest.raises(ValueError, match="not an export of kerassave_callbacks") as e:
        load_from_saved_model(path)
    assert "tf.saved_model.load" in str(e.value)
    assert "get_config" not in str(e.value)


def test_export_saved_model_on_a_full_disk_leaves_nothing_at_the_path(tmp_path):
    path = tmp_path / "export"
    script = os.path.join(os.path.dirname(__file__), "export_worker.py")
    out = subprocess.run(
        [sys.executable, script, "fsize_one", str(path), "200000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is not None
    assert os.listdir(tmp_path) == []  # No half-written export, no temporary.

    model = classifier()
    export_saved_model(model, str(path))  # A retry needs no cleaning up.
    x, _ = classifier_data()
    assert_close(load_from_saved_model(str(path)).predict(x, verbose=0), model(x))


@pytest.mark.parametrize("make", [_batchnorm, _dropout], ids=["batchnorm", "dropout"])
def test_a_serving_only_export_restores_and_saves_in_a_tf1_session(make, tmp_path):
    model, x, y, _ = make()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "serve")
    export_saved_model(model, path, serving_only=True)
    target = str(tmp_path / "ckpt")
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        (output,) = sig.outputs.values()
        served = sess.run(output.name, {sig.inputs["x"].name: x})
        saver = meta.saver_def
        sess.run(saver.save_tensor_name, {saver.filename_tensor_name: target})
    assert_close(served, model.predict(x, verbose=0))
    # What a TF1 Saver saves is what was exported: every variable but the
    # ones no signature uses (a dropout's seed state).
    exported = path + "/variables/variables"
    saved = {k for k, _ in tf.train.list_variables(target)}
    unsaved = {k for k, _ in tf.train.list_variables(exported)} - saved
    seeds = {
        layout.variable_key(layout.MODEL_VARIABLES, i)
        for i, v in enumerate(model.variables)
        if "seed" in v.path
    }
    assert len(seeds) == (1 if make is _dropout else 0)
    assert unsaved == {layout.OBJECT_GRAPH_KEY} | seeds
    for key in saved:
        np.testing.assert_array_equal(
            tf.train.load_variable(target, key), tf.train.load_variable(exported, key)
        )
    # TF2 reads it natively, with every variable (the seed state too).
    loaded = tf.saved_model.load(path).model_variables
    assert value_bytes(loaded) == value_bytes(model.variables)


def test_a_serving_only_export_differentiates_in_tf2_with_custom_gradients(tmp_path):
    # swish has a custom gradient; a serve-only export keeps it, so TF2
    # differentiates the loaded endpoint as the model.
    model, x, y, _ = _dense_net(keras.layers.Dense(6, activation="swish"))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "serve")
    export_saved_model(model, path, serving_only=True)
    loaded = tf.saved_model.load(path)
    tensor = tf.constant(x)
    gradients = []
    for forward in (lambda t: loaded.serve(t), lambda t: model(t)):
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            total = tf.reduce_sum(tf.nest.flatten(forward(tensor))[0])
        gradients.append(tape.gradient(total, tensor))
    assert gradients[0] is not None
    assert_close(gradients[0], gradients[1])
