"""Serving signatures (`signatures=`): tf.Example input, Classify, Regress,
MultiInference and custom endpoints, read back as TF Serving and the TF
tools read them."""

from __future__ import annotations

import json
import subprocess

import c_loader
import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    SavedModelExporter,
    VersionedExporter,
    _verify,
    cli,
    export_saved_model,
    signatures,
)
from kerassave_callbacks.core import loader, serving_signatures, warmup

from helpers import run_tf1, saved_model_cli

COLORS = ["red", "green", "blue"]
SIGNATURES = {
    "examples": signatures.examples(),
    "classify": signatures.classify(output="label", class_names=["a", "b", "c"]),
    "regress": signatures.regress(output="score"),
}
FEATURES = {
    "measures": tf.io.FixedLenFeature([3], tf.float32),
    "count": tf.io.FixedLenFeature([1], tf.int64),
    "color": tf.io.FixedLenFeature([1], tf.string),
}
is_valid = tf.compat.v1.saved_model.signature_def_utils.is_valid_signature


def mixed_model() -> keras.Model:
    """Float, int and string (through a lookup table) inputs; a softmax
    label and a score."""
    measures = keras.Input((3,), name="measures")
    count = keras.Input((1,), name="count", dtype="int32")
    color = keras.Input((1,), name="color", dtype="string")
    colors = keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot")
    merged = keras.layers.Concatenate()(
        [measures, keras.ops.cast(count, "float32"), colors(color)]
    )
    hidden = keras.layers.Dense(8, activation="relu")(merged)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    model = keras.Model(
        {"measures": measures, "count": count, "color": color},
        {"label": label, "score": score},
        name="mixed",
    )
    model.compile("adam", {"label": "sparse_categorical_crossentropy", "score": "mse"})
    return model


def mixed_rows(n: int = 4) -> dict:
    rng = np.random.default_rng(1)
    return {
        "measures": rng.normal(size=(n, 3)).astype("float32"),
        "count": rng.integers(0, 5, size=(n, 1)).astype("int32"),
        "color": np.array([[c] for c in (COLORS + ["pink"]) * n][:n], dtype=object),
    }


def mixed_targets(n: int = 4) -> dict:
    return {"label": np.arange(n) % 3, "score": np.ones((n, 1), "float32")}


def examples_of(rows: dict) -> np.ndarray:
    n = len(rows["measures"])
    return np.array(
        [
            serving_signatures.to_example({k: v[i] for k, v in rows.items()}, FEATURES)
            for i in range(n)
        ],
        dtype=object,
    )


def predicted(model, rows) -> dict:
    outputs = model({k: tf.constant(v) for k, v in rows.items()})
    return {k: np.asarray(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(3)
    model = mixed_model()
    rows = mixed_rows(8)
    model.fit({k: tf.constant(v) for k, v in rows.items()}, mixed_targets(8), verbose=0)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["full", "serving_only"])
def exported(trained, tmp_path_factory, request):
    path = str(tmp_path_factory.mktemp("signatures") / "export")
    export_saved_model(trained, path, serving_only=request.param, signatures=SIGNATURES)
    return path


def _expected(model, rows) -> dict:
    out = predicted(model, rows)
    return {
        "serving_default": out,
        "examples": out,
        "classify": {
            "scores": out["label"],
            "classes": np.array([[b"a", b"b", b"c"]] * len(out["label"]), dtype=object),
        },
        "regress": {"outputs": out["score"]},
    }


def assert_outputs(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.dtype == object:
            np.testing.assert_array_equal(got[name], value)
        else:
            np.testing.assert_allclose(got[name], value, atol=1e-5)


def test_every_signature_is_valid_for_tf_serving_with_its_method(exported):
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], exported)
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}

    assert {k: v.method_name for k, v in sigs.items()} == {
        "serving_default": "tensorflow/serving/predict",
        "examples": "tensorflow/serving/predict",
        "classify": "tensorflow/serving/classify",
        "regress": "tensorflow/serving/regress",
    }
    assert all(is_valid(sig) for sig in sigs.values())
    assert list(sigs["classify"].inputs) == ["inputs"]
    assert set(sigs["classify"].outputs) == {"scores", "classes"}
    assert sigs["classify"].outputs["scores"].dtype == tf.float32.as_datatype_enum
    assert sigs["classify"].outputs["classes"].dtype == tf.string.as_datatype_enum
    assert list(sigs["regress"].outputs) == ["outputs"]
    # MultiInference runs classify and regress on one input tensor.
    assert (
        sigs["classify"].inputs["inputs"].name == sigs["regress"].inputs["inputs"].name
    )
    assert list(sigs["examples"].inputs) == ["examples"]
    dims = {
        name: [d.size for d in t.tensor_shape.dim]
        for name, t in sigs["classify"].outputs.items()
    }
    assert dims == {"scores": [-1, 3], "classes": [-1, 3]}
    assert [d.size for d in sigs["classify"].inputs["inputs"].tensor_shape.dim] == [-1]


def test_signatures_answer_what_the_model_answers_through_a_tf1_session(
    trained, exported
):
    rows = mixed_rows()
    examples = examples_of(rows)
    expected = _expected(trained, rows)

    for key, input_key in [("classify", "inputs"), ("regress", "inputs")] + [
        ("examples", "examples")
    ]:
        (got,) = run_tf1(exported, "serve", key, {input_key: examples})
        assert_outputs(got, expected[key])


def test_classify_and_regress_run_together_on_one_fed_tensor(trained, exported):
    rows = mixed_rows()
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], exported)
        classify, regress = (
            meta.signature_def["classify"],
            meta.signature_def["regress"],
        )
        scores, outputs = sess.run(
            [classify.outputs["scores"].name, regress.outputs["outputs"].name],
            {classify.inputs["inputs"].name: examples_of(rows)},
        )
    expected = predicted(trained, rows)
    np.testing.assert_allclose(scores, expected["label"], atol=1e-5)
    np.testing.assert_allclose(outputs, expected["score"], atol=1e-5)


def test_signatures_answer_what_the_model_answers_through_tf2(trained, exported):
    rows = mixed_rows()
    examples = tf.constant(examples_of(rows))
    loaded = tf.saved_model.load(exported, tags=["serve"])
    expected = _expected(trained, rows)

    got = {
        "classify": loaded.signatures["classify"](inputs=examples),
        "regress": loaded.signatures["regress"](inputs=examples),
        "examples": loaded.signatures["examples"](examples=examples),
        "serving_default": loaded.signatures["serving_default"](
            **{k: tf.constant(v) for k, v in rows.items()}
        ),
    }
    for key, outputs in expected.items():
        assert_outputs({k: v.numpy() for k, v in got[key].items()}, outputs)


def test_tf_cpp_loader_runs_every_signature_as_tf_serving_does(trained, exported):
    rows = mixed_rows()
    examples = examples_of(rows)
    expected = _expected(trained, rows)
    feeds = {
        "serving_default": rows,
        "examples": {"examples": examples},
        "classify": {"inputs": examples},
        "regress": {"inputs": examples},
    }
    for key, feed in feeds.items():
        assert_outputs(c_loader.run(exported, "serve", key, feed), expected[key])


def test_saved_model_cli_runs_classify_on_input_examples(trained, exported, tmp_path):
    rows = mixed_rows(1)
    example = {
        "measures": rows["measures"][0].tolist(),
        "count": rows["count"][0].tolist(),
        "color": [rows["color"][0][0]],
    }
    outdir = tmp_path / "out"
    subprocess.run(
        saved_model_cli()
        + ["run", "--dir", exported, "--tag_set", "serve"]
        + ["--signature_def", "classify", "--outdir", str(outdir)]
        + ["--input_examples", f"inputs=[{json.dumps(example)}]"],
        capture_output=True,
        check=True,
        timeout=300,
    )
    np.testing.assert_allclose(
        np.load(outdir / "scores.npy"), predicted(trained, rows)["label"], atol=1e-5
    )


def test_train_and_eval_graphs_keep_their_one_signature(exported):
    tags = [
        list(m.meta_info_def.tags)
        for m in loader.read_saved_model(exported).meta_graphs
    ]
    assert tags in ([["serve"]], [["serve"], ["train"], ["eval"]])
    for tag in [t for (t,) in tags if t != "serve"]:
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            meta = tf.compat.v1.saved_model.load(sess, [tag], exported)
        keys = [k for k in meta.signature_def if not k.startswith("__")]
        assert keys == [tag]


def test_kerassave_verify_runs_every_signature_and_inspect_names_methods(exported):
    assert cli.main(["verify", exported]) == 0
    # What verify feeds: a row for every signature (no warm-up: zeros).
    (serve,) = [
        m
        for m in loader.read_saved_model(exported).meta_graphs
        if m.meta_info_def.tags == ["serve"]
    ]
    sigs = {k: v for k, v in serve.signature_def.items() if not k.startswith("__")}
    (row,) = _verify._rows([], sigs["serving_default"])
    fed = {k for k, sig in sigs.items() if _verify._feeds(sig, row) is not None}
    assert fed == {"serving_default", "examples", "classify", "regress"}
    _, shown = cli.cmd_inspect(cli.parser().parse_args(["inspect", exported, "--json"]))
    methods = {k: v["method_name"] for k, v in shown["tags"]["serve"].items()}
    assert methods["classify"] == "tensorflow/serving/classify"
    assert methods["regress"] == "tensorflow/serving/regress"


# Refused before anything is written.


def _refused(model, specs, match, tmp_path, **kwargs):
    path = tmp_path / "refused"
    with pytest.raises((ValueError, TypeError), match=match):
        export_saved_model(model, str(path), signatures=specs, **kwargs)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_signature_for_a_model_with_several_outputs_names_them(trained, tmp_path):
    _refused(
        trained, {"c": signatures.classify()}, r"outputs \['label', 'score'\]", tmp_path
    )
    _refused(
        trained, {"c": signatures.classify(output="nope")}, "no such output", tmp_path
    )


def test_classify_and_regress_refuse_outputs_they_cannot_answer(trained, tmp_path):
    _refused(
        trained,
        {"c": signatures.classify(output="label", class_names=["x", "y"])},
        "2 names, but output 'label' has 3 scores",
        tmp_path,
    )
    _refused(
        trained,
        {"r": signatures.regress(output="label")},
        r"one float value per example",
        tmp_path,
    )


def test_an_input_with_an_unknown_inner_dimension_needs_a_feature_spec(tmp_path):
    inputs = keras.Input((None,), name="tokens", dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(10, 2)(inputs)
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    _refused(
        model,
        {"examples": signatures.examples()},
        r"input 'tokens' of shape \(None, None\).*feature_spec",
        tmp_path,
    )
    spec = {"tokens": tf.io.FixedLenFeature([4], tf.int64)}
    path = str(tmp_path / "ok")
    export_saved_model(
        model, path, signatures={"examples": signatures.examples(feature_spec=spec)}
    )
    tokens = np.array([[1, 2, 3, 4]])
    example = serving_signatures.to_example({"tokens": tokens[0]}, spec)
    (got,) = run_tf1(path, "serve", "examples", {"examples": [example]})
    (value,) = got.values()
    np.testing.assert_allclose(value, model(tokens), atol=1e-5)


def test_an_input_dtype_a_tf_example_cannot_hold_is_refused_by_name():
    inputs = {"z": tf.TensorSpec([None, 2], tf.complex64, name="z")}
    with pytest.raises(ValueError, match="input 'z' of dtype complex64.*feature_spec"):
        serving_signatures.feature_spec(inputs, signatures.examples())
    with pytest.raises(ValueError, match=r"names inputs \['nope'\]"):
        serving_signatures.feature_spec(
            inputs, signatures.examples(feature_spec={"nope": None})
        )


def test_bad_signatures_arguments_name_the_value_and_the_fix():
    with pytest.raises(TypeError, match="must be a dict"):
        signatures.normalized([signatures.classify()])
    with pytest.raises(TypeError, match=r"signatures\['x'\] must be a spec"):
        signatures.normalized({"x": "classify"})
    with pytest.raises(TypeError, match="keys must be str"):
        signatures.normalized({1: signatures.predict()})
    with pytest.raises(ValueError, match="does not start with '__'"):
        signatures.normalized({"__init": signatures.predict()})
    with pytest.raises(ValueError, match="input_signature"):
        signatures.normalized({"x": tf.function(lambda x: x)})
    with pytest.raises(ValueError, match="'train'.*train graph"):
        signatures.normalized({"train": signatures.predict()})
    with pytest.raises(ValueError, match="non-empty list of str"):
        signatures.classify(class_names=[])
    with pytest.raises(ValueError, match=r"Unknown signature kind 'clasify'"):
        signatures.parse("clasify")
    assert signatures.normalized({"serving_default": signatures.predict()}) is None


def test_the_module_is_public_and_reached_from_the_package():
    import kerassave_callbacks

    assert kerassave_callbacks.signatures is signatures
    assert "signatures" in kerassave_callbacks.__all__
    assert kerassave_callbacks.signatures.classify().method_name == (
        "tensorflow/serving/classify"
    )


def test_the_flag_value_names_keys_and_kinds():
    assert signatures.parse("classify, serving_default=examples") == {
        "classify": signatures.classify(),
        "serving_default": signatures.examples(),
    }
    assert signatures.parse("regress") == {
        "regress": signatures.regress(),
        "serving_default": signatures.predict(),
    }
    assert signatures.parse("") is None


def test_predict_under_another_key_is_the_same_function(trained, tmp_path):
    path = str(tmp_path / "export")
    export_saved_model(
        trained, path, serving_only=True, signatures={"raw": signatures.predict()}
    )
    rows = mixed_rows(2)
    expected = predicted(trained, rows)
    for key in ("raw", "serving_default"):
        (got,) = run_tf1(path, "serve", key, rows)
        assert_outputs(got, expected)


# Custom endpoints.


def test_a_custom_endpoint_with_its_own_preprocessing_serves(trained, tmp_path):
    # (Without autograph: its converted-function cache can hand a function
    # defined in a test to another test's function that reuses its id.)
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="csv")], autograph=False
    )
    def from_csv(csv):
        fields = tf.strings.split(csv, ",").to_tensor(shape=[None, 5])
        measures = tf.strings.to_number(fields[:, :3])
        count = tf.strings.to_number(fields[:, 3:4], tf.int32)
        outputs = trained(
            {"measures": measures, "count": count, "color": fields[:, 4:5]}
        )
        return {"label": outputs["label"]}

    path = str(tmp_path / "export")
    export_saved_model(trained, path, signatures={"csv": from_csv})
    lines = np.array([b"0.5,1,-2,3,blue", b"1,0,0,1,red"], dtype=object)
    rows = {
        "measures": np.array([[0.5, 1, -2], [1, 0, 0]], "float32"),
        "count": np.array([[3], [1]], "int32"),
        "color": np.array([["blue"], ["red"]], dtype=object),
    }
    expected = predicted(trained, rows)["label"]
    (tf1,) = run_tf1(path, "serve", "csv", {"csv": lines})
    np.testing.assert_allclose(tf1["label"], expected, atol=1e-5)
    loaded = tf.saved_model.load(path, tags=["serve"])
    tf2 = loaded.signatures["csv"](csv=tf.constant(lines))["label"]
    np.testing.assert_allclose(tf2.numpy(), expected, atol=1e-5)
    assert cli.main(["verify", path]) == 0


def test_verify_fails_a_signature_that_fails_on_the_warm_up_rows(trained, tmp_path):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="measures"),
            tf.TensorSpec([None, 1], tf.int32, name="count"),
            tf.TensorSpec([None, 1], tf.string, name="color"),
        ],
        autograph=False,
    )
    def strict(measures, count, color):
        check = tf.debugging.assert_less(measures, -100.0, message="too large")
        with tf.control_dependencies([check]):
            return {
                "label": trained(
                    {"measures": measures, "count": count, "color": color}
                )["label"]
            }

    path = str(tmp_path / "export")
    arguments = dict(signatures={"strict": strict}, warmup_inputs=mixed_rows(2))
    # The publish gate refuses it first; verify, on a version made without.
    with pytest.raises(ValueError, match="'strict' failed on the warm-up rows"):
        export_saved_model(trained, path, **arguments)
    export_saved_model(trained, path, validate=False, **arguments)
    assert cli.main(["verify", path]) == 1


# Warm-up requests target serving_default, through its API.


@pytest.mark.parametrize(
    "spec, log_type",
    [
        (signatures.classify(output="label"), "classify_log"),
        (signatures.regress(output="score"), "regress_log"),
        (signatures.examples(), "predict_log"),
    ],
)
def test_warm_up_requests_go_through_the_api_of_serving_default(
    trained, tmp_path, spec, log_type
):
    from tensorflow_serving.apis import prediction_log_pb2

    path = str(tmp_path / "export")
    rows = mixed_rows(3)
    export_saved_model(
        trained,
        path,
        serving_only=True,
        signatures={"serving_default": spec},
        warmup_inputs=rows,
    )
    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(
            f"{path}/assets.extra/tf_serving_warmup_requests"
        )
    ]
    assert [r.WhichOneof("log_type") for r in records] == [log_type] * 3
    requests = warmup.read(path)
    assert {r.model_spec.signature_name for r in requests} == {"serving_default"}
    if log_type == "predict_log":
        serialized = [tf.make_ndarray(r.inputs["examples"])[0] for r in requests]
    else:
        serialized = [
            r.input.example_list.examples[0].SerializeToString() for r in requests
        ]
    # The requests hold the rows: run through serving_default, they answer
    # what the model answers.
    (got,) = run_tf1(path, "serve", "serving_default", {spec.input_key: serialized})
    expected = predicted(trained, rows)
    key = {"classify_log": "scores", "regress_log": "outputs"}.get(log_type, "label")
    want = expected["score" if key == "outputs" else "label"]
    np.testing.assert_allclose(got[key], want, atol=1e-5)
    assert cli.main(["verify", path]) == 0


def test_warm_up_rows_cannot_target_a_custom_serving_default(trained, tmp_path):
    @tf.function(
        input_signature=[tf.TensorSpec([None, 3], tf.float32)], autograph=False
    )
    def custom(x):
        return trained(
            {
                "measures": x,
                "count": tf.zeros([tf.shape(x)[0], 1], tf.int32),
                "color": tf.fill([tf.shape(x)[0], 1], "red"),
            }
        )

    _refused(
        trained,
        {"serving_default": custom},
        "serving_default is a custom endpoint",
        tmp_path,
        warmup_inputs=mixed_rows(2),
    )


# Everywhere exports are made.


def test_the_callback_traces_signatures_once_and_every_version_classifies(tmp_path):
    model = mixed_model()
    rows = mixed_rows(8)
    exporter = SavedModelExporter(
        str(tmp_path / "exports"),
        grace_seconds=0,
        signatures={"classify": signatures.classify(output="label")},
        async_export=True,
    )
    data = {k: tf.constant(v) for k, v in rows.items()}
    model.fit(data, mixed_targets(8), epochs=2, verbose=0, callbacks=[exporter])
    versions = exporter.versions()
    assert len(versions) == 2
    graphs = exporter.exporter._cache.graphs
    model.fit(data, mixed_targets(8), epochs=1, verbose=0, callbacks=[exporter])
    assert exporter.exporter._cache.graphs is graphs  # Traced once.
    newest = str(tmp_path / "exports" / str(exporter.versions()[-1]))
    (got,) = run_tf1(newest, "serve", "classify", {"inputs": examples_of(rows)})
    np.testing.assert_allclose(
        got["scores"], predicted(model, rows)["label"], atol=1e-5
    )


def test_exports_with_signatures_go_to_ram_filesystem(trained):
    with VersionedExporter(
        "ram://signatures/exports",
        grace_seconds=0,
        signatures={"regress": signatures.regress(output="score")},
    ) as exporter:
        path = exporter.export(trained)
    rows = mixed_rows(2)
    loaded = tf.saved_model.load(path, tags=["serve"])
    got = loaded.signatures["regress"](inputs=tf.constant(examples_of(rows)))
    np.testing.assert_allclose(
        got["outputs"].numpy(), predicted(trained, rows)["score"], atol=1e-5
    )


def test_a_tf_keras_model_gets_the_same_signatures(tmp_path):
    import tf_keras

    measures = tf_keras.Input((3,), name="measures")
    count = tf_keras.Input((1,), name="count", dtype="int32")
    color = tf_keras.Input((1,), name="color", dtype="string")
    colors = tf_keras.layers.StringLookup(vocabulary=COLORS, output_mode="one_hot")
    merged = tf_keras.layers.Concatenate()(
        [measures, tf_keras.layers.Lambda(lambda c: tf.cast(c, "float32"))(count)]
        + [colors(color)]
    )
    label = tf_keras.layers.Dense(3, activation="softmax", name="label")(merged)
    score = tf_keras.layers.Dense(1, name="score")(merged)
    model = tf_keras.Model(
        {"measures": measures, "count": count, "color": color},
        {"label": label, "score": score},
    )
    model.compile("adam", {"label": "sparse_categorical_crossentropy", "score": "mse"})
    rows = mixed_rows(8)
    data = {k: tf.constant(v) for k, v in rows.items()}
    model.fit(data, mixed_targets(8), verbose=0)
    path = str(tmp_path / "export")

    export_saved_model(model, path, signatures=SIGNATURES)

    expected = _expected(model, rows)
    for key in ("classify", "regress"):
        (got,) = run_tf1(path, "serve", key, {"inputs": examples_of(rows)})
        assert_outputs(got, expected[key])
    loaded = tf.saved_model.load(path, tags=["serve"])
    got = loaded.signatures["examples"](examples=tf.constant(examples_of(rows)))
    assert_outputs({k: v.numpy() for k, v in got.items()}, expected["examples"])
    assert cli.main(["verify", path]) == 0


def test_float16_outputs_of_mixed_precision_are_served_as_float(tmp_path):
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", dtype="mixed_float16")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", dtype="mixed_float16")(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert model(x).dtype == "float16"
    path = str(tmp_path / "export")
    export_saved_model(model, path, signatures={"classify": signatures.classify()})

    feature = {"features": tf.io.FixedLenFeature([4], tf.float32)}
    examples = [serving_signatures.to_example({"features": row}, feature) for row in x]
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
        sig = meta.signature_def["classify"]
        assert is_valid(sig)
        scores = sess.run(
            sig.outputs["scores"].name, {sig.inputs["inputs"].name: examples}
        )
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.asarray(model(x), "float32"), atol=1e-3)
