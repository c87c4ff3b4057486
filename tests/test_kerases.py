"""Keras 3 (`keras`) and Keras 2 (`tf_keras`) models: the same API, the
same exports. Tests that hold for both take the Keras module `K` and run
once with each; the ones about Keras 2 alone say so."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from kerassave_callbacks import (
    ExportDir,
    SavedModelExporter,
    export_saved_model,
    load_from_saved_model,
)
from kerassave_callbacks.core import loader, specs

from helpers import assert_close, events, run_python, run_tf1


@pytest.fixture(params=["keras", "tf_keras"])
def K(request):
    """The Keras module a test builds its models with."""
    return importlib.import_module(request.param)


_TOWERS: dict[str, type] = {}


def _tower_class(K) -> type:
    """A subclassed model with a config, registered once per Keras."""
    if K.__name__ not in _TOWERS:

        @K.saving.register_keras_serializable(package="test_kerases")
        class Tower(K.Model):
            def __init__(self, units=3, **kwargs):
                super().__init__(**kwargs)
                self.units = units
                self.hidden = K.layers.Dense(8, activation="relu")
                self.norm = K.layers.BatchNormalization()
                self.out = K.layers.Dense(units)

            def call(self, x, training=False):
                return self.out(self.norm(self.hidden(x), training=training))

            def get_config(self):
                return {**super().get_config(), "units": self.units}

        _TOWERS[K.__name__] = Tower
    return _TOWERS[K.__name__]


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 4), dtype=np.float32), rng.integers(0, 3, n)


def _sequential(K=tf_keras):
    x, y = _data()
    model = K.Sequential(
        [
            K.Input((4,), name="features"),
            K.layers.Dense(8, activation="relu"),
            K.layers.Dense(3, name="logits"),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, x, y, {"features": x, "logits_target": y}


def _functional_dict(K):
    x, y = _data()
    inputs = {
        "a": K.Input((3,), name="a"),
        "b": K.Input((1,), name="b"),
    }
    hidden = K.layers.Concatenate()([inputs["a"], inputs["b"]])
    hidden = K.layers.Dense(8, activation="relu")(hidden)
    out = K.layers.Dense(1, name="score")(hidden)
    model = K.Model(inputs, out)
    model.compile(optimizer="rmsprop", loss="mse", metrics=["mae"])
    features = {"a": x[:, :3], "b": x[:, 3:]}
    target = y[:, None].astype(np.float32)
    return model, features, target, {**features, "score_target": target}


def _subclassed(K):
    x, y = _data()
    model = _tower_class(K)(units=2)
    model.compile(optimizer="sgd", loss="mse")
    target = np.stack([y, -y], axis=1).astype(np.float32)
    model(x[:1])
    # The input takes the name Keras gave it when the model was called.
    (spec,) = tf.nest.flatten(specs.input_structure(model))
    return model, x, target, {spec.name: x, "output_0_target": target}


KINDS = {
    "sequential": _sequential,
    "functional_dict": _functional_dict,
    "subclassed": _subclassed,
}


@pytest.mark.parametrize("make", KINDS.values(), ids=KINDS.keys())
def test_round_trip_and_train_signature(K, make, tmp_path):
    model, x, y, feeds = make(K)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    saved = loader.read_saved_model(path)
    signatures = {
        tuple(m.meta_info_def.tags): {
            k: v.method_name for k, v in m.signature_def.items() if k[:2] != "__"
        }
        for m in saved.meta_graphs
    }
    assert signatures == {
        ("serve",): {"serving_default": "tensorflow/serving/predict"},
        ("train",): {"train": "tensorflow/supervised/training"},
        ("eval",): {"eval": "tensorflow/supervised/eval"},
    }
    loaded = load_from_saved_model(path)
    assert isinstance(loaded, K.Model)
    assert type(loaded) is type(model)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 4
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6)
    # TF1 sessions load every tag; serve predicts like the model.
    serve_feeds = {k: v for k, v in feeds.items() if not k.endswith("_target")}
    (served,) = run_tf1(path, "serve", "serving_default", serve_feeds)
    assert_close(next(iter(served.values())), model.predict(x, verbose=0), 1e-5)
    (evaluated,) = run_tf1(path, "eval", "eval", feeds)
    # The train signature, from the export's state, repeats tf_keras'
    # train_on_batch of the model loaded from the same export.
    runs = run_tf1(path, "train", "train", feeds, runs=3)
    expected = [_batch_loss(loaded, x, y) for _ in range(3)]
    assert_close([r["loss"] for r in runs], expected, atol=1e-5)
    # And eval repeats evaluate() (BatchNorm in inference mode included).
    fresh = load_from_saved_model(path)
    expected = fresh.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert_close(evaluated["loss"], expected["loss"])


def test_the_same_callback_in_fit(K, tmp_path):
    model, x, y, _ = _sequential(K)
    exporter = SavedModelExporter(
        str(tmp_path / "exports"),
        keep=2,
        grace_seconds=0,
        every_n_steps=2,
        monitor="val_loss",
        log_dir=str(tmp_path / "logs"),
        async_export=True,
    )
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=4,
        validation_split=0.25,
        verbose=0,
        callbacks=[exporter],
    )
    exporter.close()

    versions = exporter.versions()
    assert len(versions) == 2
    newest = tf.saved_model.load(
        str(tmp_path / "exports" / str(versions[-1])), ["serve"]
    )
    served = newest.signatures["serving_default"](features=tf.constant(x))
    assert_close(served["logits"], model.predict(x, verbose=0), 1e-6)
    info = events(tmp_path / "logs" / "export")
    steps = [e.step for e in info.Tensors("export/duration_seconds")]
    # Three epochs of three steps: every second step and every epoch end,
    # once per step (at step 6 both ask), none again at the end of training.
    assert steps == [2, 3, 4, 6, 8, 9]
    record = ExportDir(str(tmp_path / "exports")).info(versions[-1])
    assert record["library"]["keras"] == K.__version__
    assert record["epoch"] == 3 and record["metrics"]["val_loss"] > 0


def test_tf_keras_is_optional(tmp_path):
    """Importing the package, exporting and loading a Keras 3 model never
    import tf_keras; loading a tf_keras export without it says what to
    install."""
    model, x, y, _ = _sequential()
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    out = run_python(
        "import sys\n"
        "sys.modules['tf_keras'] = None  # as if it were not installed\n"
        "import keras, numpy as np\n"
        "import kerassave_callbacks as ks\n"
        "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        "m.compile(optimizer='adam', loss='mse')\n"
        "ks.export_saved_model(m, sys.argv[2])\n"
        "ks.load_from_saved_model(sys.argv[2])\n"
        "try:\n"
        "    ks.load_from_saved_model(sys.argv[1])\n"
        "except ImportError as e:\n"
        "    print(repr(str(e)))\n",
        path,
        tmp_path / "keras3",
    )
    assert "pip install 'tf_keras==" in out and "-e '.[tf_keras]'" in out
    assert "import kerassave_callbacks" not in out


def test_legacy_keras_env_var_changes_no_code(tmp_path):
    """With TF_USE_LEGACY_KERAS=1, `tf.keras` is tf_keras: the same code
    exports and loads."""
    out = run_python(
        "import os, sys\n"
        "os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "import numpy as np, tensorflow as tf\n"
        "from kerassave_callbacks import SavedModelExporter, load_from_saved_model\n"
        "m = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])\n"
        "m.compile(optimizer='adam', loss='mse')\n"
        "cb = SavedModelExporter(sys.argv[1])\n"
        "m.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, verbose=0, callbacks=[cb])\n"
        "path = os.path.join(sys.argv[1], str(max(cb.versions())))\n"
        "loaded = load_from_saved_model(path)\n"
        "print(type(loaded).__module__.split('.')[0], len(cb.versions()),\n"
        "      int(loaded.optimizer.iterations))\n",
        tmp_path / "exports",
    )
    assert out == "tf_keras 2 2"


def test_tf_keras_mixed_precision_round_trips_with_its_loss_scale(tmp_path):
    K = tf_keras  # Keras 3's: test_round_trips (its optimizer has other names).
    K.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = K.Sequential(
            [
                K.Input((4,), name="x"),
                K.layers.Dense(3, name="d"),
                K.layers.Activation("linear", dtype="float32", name="y"),
            ]
        )
        model.compile(optimizer="adam", loss="mse")
        x, _ = _data()
        y = np.stack([x.sum(axis=1)] * 3, axis=1)
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        path = str(tmp_path / "export")
        export_saved_model(model, path)
    finally:
        K.mixed_precision.set_global_policy("float32")
    loaded = load_from_saved_model(path)
    assert type(loaded.optimizer).__name__ == "LossScaleOptimizerV3"
    assert float(loaded.optimizer.loss_scale) == float(model.optimizer.loss_scale)
    assert loaded.layers[0].compute_dtype == "float16"
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6)
    runs = run_tf1(path, "train", "train", {"x": x, "y_target": y}, runs=2)
    expected = [loaded.train_on_batch(x, y) for _ in range(2)]
    assert_close([r["loss"] for r in runs], expected, atol=1e-5)


def test_adapted_preprocessing_layers_serve_strings_and_round_trip(K, tmp_path):
    texts = np.array([["good fun film"], ["dull slow plot"], ["fun plot"], ["dull"]])
    labels = np.array([[1.0], [0.0], [1.0], [0.0]], dtype=np.float32)
    vectorize = K.layers.TextVectorization(output_sequence_length=3)
    vectorize.adapt(texts[:, 0])
    tag = K.layers.StringLookup(output_mode="one_hot", name="tag")
    tag.adapt(np.array(["news", "review", "review"]))
    scale = K.layers.Normalization(name="scale")
    scale.adapt(np.array([[10.0], [20.0], [60.0]], dtype=np.float32))
    inputs = {
        "text": K.Input((1,), dtype="string", name="text"),
        "tag": K.Input((1,), dtype="string", name="tag_in"),
        "size": K.Input((1,), name="size"),
    }
    words = K.layers.Embedding(vectorize.vocabulary_size(), 4)(
        vectorize(K.layers.Flatten()(inputs["text"]))
    )
    hidden = K.layers.Concatenate()(
        [
            K.layers.GlobalAveragePooling1D()(words),
            tag(inputs["tag"]),
            scale(inputs["size"]),
        ]
    )
    model = K.Model(inputs, K.layers.Dense(1, name="score")(hidden))
    model.compile(optimizer="adam", loss="mse")
    x = {
        "text": texts,
        "tag": np.array([["news"], ["review"], ["zzz"], ["news"]]),
        "size": np.array([[10.0], [30.0], [50.0], [0.0]], dtype=np.float32),
    }
    tensors = {k: tf.constant(v) for k, v in x.items()}  # Keras 3: no str arrays.
    model.fit(tensors, labels, epochs=2, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    expected = model.predict(tensors, verbose=0)
    (served,) = run_tf1(path, "serve", "serving_default", x)
    assert_close(served["score"], expected, atol=1e-6)
    loaded = load_from_saved_model(path)
    assert loaded.get_layer("tag").get_vocabulary() == tag.get_vocabulary()
    assert_close(loaded.get_layer("scale")(x["size"]), scale(x["size"]))
    assert_close(loaded.predict(tensors, verbose=0), expected, atol=1e-6)
    # The train graph trains from raw strings in a TF1 session.
    runs = run_tf1(path, "train", "train", {**x, "score_target": labels}, runs=3)
    assert runs[2]["loss"] < runs[0]["loss"]


def _dense(K, optimizer, loss="mse"):
    model = K.Sequential([K.Input((4,), name="x"), K.layers.Dense(2, name="y")])
    model.compile(optimizer=optimizer, loss=loss)
    return model


@pytest.mark.parametrize(
    "keras_name, optimizer",
    [
        ("tf_keras", lambda K: K.optimizers.legacy.Adam()),
        ("tf_keras", lambda K: K.optimizers.SGD(0.1, momentum=0.9, use_ema=True)),
        ("keras", lambda K: K.optimizers.SGD(0.1, momentum=0.9, use_ema=True)),
    ],
    ids=["tf_keras_legacy_adam", "tf_keras_sgd_ema", "keras_sgd_ema"],
)
def test_optimizer_state_round_trips(keras_name, optimizer, tmp_path):
    K = importlib.import_module(keras_name)
    model = _dense(K, optimizer(K))
    x, _ = _data()
    y = np.stack([x.sum(axis=1), x[:, 0]], axis=1)
    exporter = SavedModelExporter(str(tmp_path / "exports"), keep=None)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[exporter])
    # The newest version serves what fit returned (with EMA: the averages
    # fit swapped into the weights at its end).
    newest = str(tmp_path / "exports" / str(max(exporter.versions())))
    loaded = load_from_saved_model(newest)
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6)
    want, got = _optimizer_variables(model), _optimizer_variables(loaded)
    assert len(got) == len(want) > 1
    for restored, variable in zip(got, want, strict=True):
        # The slot of the same weight (Keras 3 prefixes one side's slot
        # names with the model's name).
        short, long = sorted([restored.name, variable.name.split("/", 1)[-1]], key=len)
        assert long.endswith(short)
        np.testing.assert_array_equal(restored.numpy(), variable.numpy())
    runs = run_tf1(newest, "train", "train", {"x": x, "y_target": y}, runs=2)
    expected = [_batch_loss(loaded, x, y) for _ in range(2)]
    assert_close([r["loss"] for r in runs], expected, atol=1e-5)


def _batch_loss(model, x, y) -> float:
    """The loss of one `train_on_batch` step (metrics reset first: Keras 3
    always does, Keras 2 when asked)."""
    reset = {}
    if "reset_metrics" in inspect.signature(model.train_on_batch).parameters:
        reset["reset_metrics"] = True
    return model.train_on_batch(x, y, return_dict=True, **reset)["loss"]


def _optimizer_variables(model) -> list:
    variables = model.optimizer.variables
    return variables() if callable(variables) else list(variables)


def test_own_train_step_is_refused_and_no_loss_gets_the_serve_graph(
    K, tmp_path, caplog
):
    class OwnStep(K.Model):
        def train_step(self, data):
            return super().train_step(data)

    inputs = K.Input((4,), name="x")
    own = OwnStep(inputs, K.layers.Dense(2)(inputs))
    own.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="overrides `train_step` in .*OwnStep"):
        export_saved_model(own, str(tmp_path / "own"))
    assert not (tmp_path / "own").exists()
    export_saved_model(own, str(tmp_path / "own"), serving_only=True)

    no_loss = _dense(K, "adam", loss=None)
    with caplog.at_level("WARNING"):
        export_saved_model(no_loss, str(tmp_path / "no_loss"))
    tags = [
        m.meta_info_def.tags
        for m in loader.read_saved_model(str(tmp_path / "no_loss")).meta_graphs
    ]
    assert tags == [["serve"]]
    assert "compiled with no loss" in caplog.text
    x, _ = _data()
    (served,) = run_tf1(str(tmp_path / "no_loss"), "serve", "serving_default", {"x": x})
    assert_close(served["y"], no_loss.predict(x, verbose=0), 1e-6)
