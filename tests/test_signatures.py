"""Serving signatures (`signatures=`): tf.Example input, Classify, Regress,
MultiInference and custom endpoints, read back as TF Serving and the TF
tools read them."""

from __future__ import annotations

import json
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_tf1, saved_model_cli

from kerassave_callbacks import (
    SavedModelExporter,
    VersionedExporter,
    cli,
    export_saved_model,
    signatures,
)
from kerassave_callbacks.core import loader, serving_signatures, warmup

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
    export_saved_model(
        trained, path, serving_only=request.param, signatures=SIGNATURES
    )
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
    assert sigs["classify"].inputs["inputs"].name == sigs["regress"].inputs["inputs"].name
    assert list(sigs["examples"].inputs) == ["examples"]


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
        classify, regress = meta.signature_def["classify"], meta.signature_def["regress"]
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
    tags = [list(m.meta_info_def.tags) for m in loader.read_saved_model(exported).meta_graphs]
    assert tags in ([["serve"]], [["serve"], ["train"], ["eval"]])
    for tag in [t for (t,) in tags if t != "serve"]:
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            meta = tf.compat.v1.saved_model.load(sess, [tag], exported)
        keys = [k for k in meta.signature_def if not k.startswith("__")]
        assert keys == [tag]


def test_kerassave_verify_runs_every_signature_and_inspect_names_methods(exported):
    assert cli.main(["verify", exported]) == 0
    _, shown = cli.cmd_inspect(cli.parser().parse_args(["inspect", exported, "--json"]))
    methods = {k: v["method_name"] for k, v in shown["tags"]["serve"].items()}
    assert methods["classify"] == "tensorflow/serving/classify"
    assert methods["regress"] == "tensorflow/serving/regress"
