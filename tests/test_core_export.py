"""export_saved_model: what the serve, train and eval graphs do once loaded."""

from __future__ import annotations

import logging
import re
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from kerassave_callbacks import export_saved_model

from conftest import (
    ConfigurableDoubler,
    Doubler,
    Options,
    classifier,
    classifier_data,
    two_tower,
)
from helpers import (
    assert_close,
    run_tf1,
    saved_model_cli,
    serve_tf2,
    trained_export,
)

RNG = np.random.default_rng(1)
X4 = RNG.normal(size=(5, 4)).astype("float32")
A3 = RNG.normal(size=(5, 3)).astype("float32")
B2 = RNG.normal(size=(5, 2)).astype("float32")


def _sequential_built():
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    return model, None, {"x": X4}, X4


def _sequential_unbuilt():
    model = keras.Sequential([keras.layers.Dense(3)])
    signature = [tf.TensorSpec([None, 4], tf.float32, name="x")]
    return model, signature, {"x": X4}, X4


def _functional():
    return classifier(), None, {"features": X4}, X4


def _functional_lists():
    return two_tower(dict_io=False), None, {"a": A3, "b": B2}, [A3, B2]


def _functional_dicts():
    return two_tower(dict_io=True), None, {"a": A3, "b": B2}, {"a": A3, "b": B2}


def _subclassed_called():
    model = Doubler(Options())
    model(X4)
    return model, None, {"inputs": X4}, X4


def _subclassed_signature():
    signature = [tf.TensorSpec([None, 4], tf.float32, name="x")]
    return Doubler(Options()), signature, {"x": X4}, X4


MODELS = {
    "sequential_built": _sequential_built,
    "sequential_unbuilt_with_signature": _sequential_unbuilt,
    "functional": _functional,
    "functional_list_io": _functional_lists,
    "functional_dict_io": _functional_dicts,
    "subclassed_called": _subclassed_called,
    "subclassed_with_signature": _subclassed_signature,
}


def _flat_predictions(model, x) -> dict:
    """model.predict as a dict keyed by the serving output names."""
    out = model.predict(x, verbose=0)
    if isinstance(out, dict):
        return out
    names = getattr(model, "output_names", None)
    if isinstance(model, keras.Sequential):
        names = [model.layers[-1].name]
    names = names or ["output_0"]  # Subclassed models name no outputs.
    if isinstance(out, (list, tuple)):
        return dict(zip(names, out, strict=True))
    return {names[0]: out}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_serving_output_equals_predict_in_tf2_and_tf1(make, tmp_path):
    model, signature, feeds, x = make()
    path = str(tmp_path / "export")
    export_saved_model(model, path, input_signature=signature)
    expected = _flat_predictions(model, x)

    served = serve_tf2(path, feeds)
    (tf1,) = run_tf1(path, "serve", "serving_default", feeds)

    assert sorted(served) == sorted(expected)
    for name, value in expected.items():
        assert_close(served[name], value)
        assert_close(tf1[name], value)


def test_compiled_model_has_three_tagged_graphs_each_with_its_signature(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(classifier(), path)

    for tag, key in [
        ("serve", "serving_default"),
        ("train", "train"),
        ("eval", "eval"),
    ]:
        loaded = tf.saved_model.load(path, tags=[tag])
        assert [k for k in loaded.signatures if not k.startswith("__")] == [key]


def test_sequential_outputs_are_named_after_the_last_layer(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Dense(3, name="y")]
    )
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    train = tf.saved_model.load(path, tags=["train"]).signatures["train"]
    assert sorted(serve_tf2(path, {"x": X4})) == ["y"]
    assert sorted(train.structured_input_signature[1]) == ["x", "y_target"]


def test_train_and_eval_signature_names_and_methods(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(classifier(), path)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["train"], path)
    sig = meta.signature_def["train"]

    assert sig.method_name == "tensorflow/supervised/training"
    assert sorted(sig.inputs) == ["features", "logits_target"]
    assert sorted(sig.outputs) == [
        "loss",
        "metrics/accuracy/value",
        "predictions/logits",
    ]


def test_uncompiled_model_has_only_the_serve_graph(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(classifier(compiled=False), path)
    with pytest.raises(ValueError, match="one MetaGraph with tags"):
        tf.saved_model.load(path, tags=["train"])
    assert "serving_default" in tf.saved_model.load(path, tags=["serve"]).signatures


def test_train_signature_repeats_keras_training_steps(tmp_path):
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # Adam slots are live.
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    train = tf.saved_model.load(path, tags=["train"]).signatures["train"]

    exported, keras_losses = [], []
    for _ in range(3):
        out = train(features=tf.constant(x), logits_target=tf.constant(y))
        exported.append(float(out["loss"]))
        model.reset_metrics()
        keras_losses.append(model.train_on_batch(x, y, return_dict=True)["loss"])

    assert_close(exported, keras_losses)
    assert exported[2] < exported[0]


def test_train_signature_trains_in_a_tf1_session(tmp_path):
    x, y = classifier_data()
    path = str(tmp_path / "export")
    export_saved_model(classifier(), path)

    runs = run_tf1(path, "train", "train", {"features": x, "logits_target": y}, runs=5)

    losses = [r["loss"] for r in runs]
    assert losses[-1] < losses[0]


def test_eval_matches_evaluate_and_never_changes_weights(tmp_path):
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    evaluate = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)

    runs = run_tf1(path, "eval", "eval", {"features": x, "logits_target": y}, runs=3)
    loaded = tf.saved_model.load(path, tags=["eval"])
    eval_fn = loaded.signatures["eval"]
    before = [v.numpy() for v in loaded.variables]
    eval_fn(features=tf.constant(x), logits_target=tf.constant(y))

    assert [r["loss"] for r in runs] == pytest.approx([evaluate["loss"]] * 3, 1e-5)
    assert runs[0]["metrics/accuracy/value"] == pytest.approx(evaluate["accuracy"])
    for b, v in zip(before, loaded.variables, strict=True):
        if v.shape.rank:  # Weights; the scalar metric totals do accumulate.
            np.testing.assert_array_equal(b, v.numpy())


def test_eval_of_a_masked_output_keeps_the_mask_in_its_loss(tmp_path):
    """Eval's predictions come from the serve function, except where an
    output carries a Keras mask, which a function call would drop."""
    inputs = keras.Input((5,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(20, 4, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, size=(8, 5)).astype("int32")
    x[:, 3:] = 0  # padding, masked out of the loss
    y = rng.normal(size=(8, 5, 1)).astype("float32")
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    (run,) = run_tf1(path, "eval", "eval", {"ids": x, "out_target": y})

    masked = model.evaluate(x, y, batch_size=8, verbose=0)
    unmasked = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    assert run["loss"] == pytest.approx(masked, rel=1e-5)
    assert masked != pytest.approx(unmasked, rel=1e-3)


@pytest.mark.parametrize(
    "loss, expected_dtype, expected_shape",
    [
        ("sparse_categorical_crossentropy", tf.int64, [None]),
        (keras.losses.SparseCategoricalCrossentropy(), tf.int64, [None]),
        (keras.losses.sparse_categorical_crossentropy, tf.int64, [None]),
        ("categorical_crossentropy", tf.float32, [None, 3]),
        ("mse", tf.float32, [None, 3]),
    ],
    ids=["sparse_str", "sparse_object", "sparse_function", "categorical", "mse"],
)
def test_target_spec_follows_the_compiled_loss(
    loss, expected_dtype, expected_shape, tmp_path
):
    model = classifier(compiled=False)
    model.compile(optimizer="sgd", loss=loss)
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    fn = tf.saved_model.load(path, tags=["train"]).signatures["train"]
    spec = fn.structured_input_signature[1]["logits_target"]

    assert spec.dtype == expected_dtype
    assert spec.shape.as_list() == expected_shape


def test_target_signature_overrides_the_default(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(
        classifier(),
        path,
        target_signature={"logits": tf.TensorSpec([None, 1], tf.int32)},
    )
    fn = tf.saved_model.load(path, tags=["eval"]).signatures["eval"]
    spec = fn.structured_input_signature[1]["logits_target"]
    out = fn(features=tf.constant(X4), logits_target=tf.zeros([5, 1], tf.int32))

    assert (spec.dtype, spec.shape.as_list()) == (tf.int32, [None, 1])
    assert np.isfinite(out["loss"].numpy())


def test_as_text_writes_a_pbtxt_both_loaders_read(tmp_path):
    model = classifier()
    path = tmp_path / "export"
    export_saved_model(model, str(path), as_text=True)

    (tf1,) = run_tf1(str(path), "serve", "serving_default", {"features": X4})

    assert (path / "saved_model.pbtxt").exists()
    assert not (path / "saved_model.pb").exists()
    assert_close(serve_tf2(str(path), {"features": X4})["logits"], model(X4))
    assert_close(tf1["logits"], model(X4))


def test_serving_only_writes_only_the_serve_graph(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(classifier(), path, serving_only=True)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        with pytest.raises(RuntimeError, match="MetaGraph"):
            tf.compat.v1.saved_model.load(sess, ["train"], path)
    assert "serving_default" in tf.saved_model.load(path, tags=["serve"]).signatures


def test_one_checkpoint_holds_weights_optimizer_and_metric_state(tmp_path):
    model, _, _, _ = trained_export(tmp_path)
    reader = tf.train.load_checkpoint(str(tmp_path / "export/variables/variables"))
    keys = [k for k in reader.get_variable_to_shape_map() if "VARIABLE_VALUE" in k]

    groups = sorted({k.split("/")[0] for k in keys})
    iterations = reader.get_tensor("optimizer_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    assert groups == ["metric_variables", "model_variables", "optimizer_variables"]
    expected = model.variables + model.optimizer.variables + model.metrics_variables
    assert len(keys) == len(expected)  # No variable is saved twice.
    assert iterations == 8
    # tf.train.Checkpoint finds every group through the object graph too.
    fresh = {
        group: [tf.Variable(tf.zeros(v.shape, v.dtype)) for v in variables]
        for group, variables in (
            ("optimizer_variables", model.optimizer.variables),
            ("metric_variables", model.metrics_variables),
        )
    }
    status = tf.train.Checkpoint(**fresh).read(
        str(tmp_path / "export/variables/variables")
    )
    status.assert_existing_objects_matched()
    assert int(fresh["optimizer_variables"][0].numpy()) == 8


def test_keras_json_is_saved_as_an_asset(tmp_path):
    model = classifier()
    export_saved_model(model, str(tmp_path / "export"))
    saved_json = (tmp_path / "export/assets/saved_model.json").read_text()
    assert saved_json == model.to_json()


def test_subclassed_model_without_get_config_exports_with_a_warning(tmp_path, caplog):
    model = Doubler(Options())
    model(X4)

    with caplog.at_level(logging.WARNING):
        export_saved_model(model, str(tmp_path / "export"))

    assert "has no get_config()" in caplog.text
    assert not (tmp_path / "export/assets/saved_model.json").exists()
    assert_close(
        serve_tf2(str(tmp_path / "export"), {"inputs": X4})["output_0"], model(X4)
    )


def test_subclassed_model_with_get_config_saves_json(tmp_path):
    model = ConfigurableDoubler()
    model(X4)
    export_saved_model(model, str(tmp_path / "export"))
    assert (tmp_path / "export/assets/saved_model.json").exists()


def test_saved_model_cli_lists_the_three_tag_sets(tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(classifier(), path)

    out = subprocess.run(
        saved_model_cli() + ["show", "--dir", path, "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    for tag, key, method in [
        ("serve", "serving_default", "tensorflow/serving/predict"),
        ("train", "train", "tensorflow/supervised/training"),
        ("eval", "eval", "tensorflow/supervised/eval"),
    ]:
        section = out.split(f"MetaGraphDef with tag-set: '{tag}'")[1].split(
            "MetaGraphDef with tag-set"
        )[0]
        assert f"signature_def['{key}']" in section
        assert f"Method name is: {method}" in section


def test_export_to_ram_filesystem():
    path = "ram://core_export/model"
    model = classifier()
    export_saved_model(model, path)
    assert tf.io.gfile.exists(path + "/saved_model.pb")
    assert_close(serve_tf2(path, {"features": X4})["logits"], model(X4))


def test_saved_model_cli_runs_the_serve_signature(tmp_path):
    model = classifier()
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    outputs = tmp_path / "outputs"
    np.save(tmp_path / "features.npy", np.ones((2, 4), "float32"))

    subprocess.run(
        saved_model_cli()
        + [
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"features={tmp_path / 'features.npy'}",
            "--outdir",
            str(outputs),
        ],
        capture_output=True,
        check=True,
    )

    assert_close(np.load(outputs / "logits.npy"), model(np.ones((2, 4), "float32")))


def test_tflite_converter_reads_the_serve_graph(tmp_path):
    model = classifier()
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        path, signature_keys=["serving_default"], tags={"serve"}
    )
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("serving_default")

    assert_close(runner(features=X4)["logits"], model(X4))


def test_batchnorm_and_dropout_train_and_eval_modes(tmp_path):
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.BatchNormalization(name="bn")(inputs)
    hidden = keras.layers.Dropout(0.5, name="drop")(hidden)
    outputs = keras.layers.Dense(1, name="y")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    feeds = {"x": X4 * 10.0 + 3.0, "y_target": np.zeros((5, 1), "float32")}

    evals = run_tf1(path, "eval", "eval", feeds, runs=2)
    (trained,) = run_tf1(path, "train", "train", feeds, runs=1)
    served = serve_tf2(path, {"x": feeds["x"]})

    # Eval is deterministic (no dropout, frozen BN statistics) and equals
    # Keras' inference on the exported weights.
    assert_close(evals[0]["predictions/y"], evals[1]["predictions/y"])
    assert_close(evals[0]["predictions/y"], model(feeds["x"], training=False))
    assert_close(served["y"], model(feeds["x"], training=False))
    # Training mode normalises with the batch statistics instead.
    assert not np.allclose(trained["predictions/y"], evals[0]["predictions/y"])


def test_each_graph_carries_its_own_functions_the_train_step_compacted(tmp_path):
    path = tmp_path / "export"
    export_saved_model(classifier(), str(path))
    saved = saved_model_pb2.SavedModel.FromString(
        (path / "saved_model.pb").read_bytes()
    )
    functions = {  # tag -> {"serve" of "__inference_serve_12": FunctionDef}
        meta.meta_info_def.tags[0]: {
            f.signature.name.split("_")[3]: f for f in meta.graph_def.library.function
        }
        for meta in saved.meta_graphs
    }

    assert "serve" in functions["serve"] and "step" not in functions["serve"]
    assert "step" in functions["train"] and "serve" not in functions["train"]
    # Eval's predictions are a call of the serve function: the same ops as
    # serve's, traced and saved once (#30).
    assert "step" in functions["eval"] and "serve" in functions["eval"]
    # The train and eval signatures call their step itself: no wrapper
    # traced by tf.saved_model.save, as the serve signature has (#30).
    assert "signature" in functions["serve"]
    assert "signature" not in functions["train"]
    assert "signature" not in functions["eval"]
    # Adam traces beta_1 ** t and beta_2 ** t for each of the 4 variables;
    # the train graph computes them once (#30), under short names.
    step = functions["train"]["step"]
    assert [n.op for n in step.node_def].count("Pow") == 2
    names = [n.name for n in step.node_def]
    assert all(re.fullmatch(r"[^/]+(/[0-9a-f]+)?", name) for name in names)
    scopes = {name.split("/")[0] for name in names}
    assert "gradient_tape" in scopes
    assert any(re.fullmatch(r"adam(_\d+)?", scope) for scope in scopes)
    # What TF Serving runs keeps the names the model traced.
    serve = functions["serve"]["serve"]
    assert any(re.search(r"hidden\w*/MatMul$", n.name) for n in serve.node_def)
