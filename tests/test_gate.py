"""The publish gate and the one name mapping: what gets an integer name has
loaded as TF Serving loads it, replayed its warm-up and answered as the
model does; odd Keras names are served under keys TF keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import c_loader
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from kerassave_callbacks import (
    ExportRejectedError,
    GateFailure,
    PublishGate,
    SavedModelExporter,
    VersionedExporter,
    export_saved_model,
)
from kerassave_callbacks.core import names, validation, warmup

from conftest import classifier, classifier_data
from helpers import events, run_tf1, serve_tf2


@keras.saving.register_keras_serializable(package="test_gate")
class Scale(keras.layers.Layer):
    """Multiplies by a Python float read in `call()`: traced graphs freeze it."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _scaled_model():
    inputs = keras.Input((4,), name="features")
    scale = Scale(name="scale")
    outputs = keras.layers.Dense(3, name="logits")(scale(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    return model, scale


# The name mapping.


@pytest.mark.parametrize(
    "name, key",
    [
        ("features", "features"),
        ("sepal.length", "sepal_length"),
        ("petal-width", "petal_width"),
        ("1x", "arg_1x"),
        ("_id", "arg__id"),
        ("état", "etat"),
        ("年龄", "u5e74u9f84"),
        ("a b", "a_b"),
        ("class", "class_"),
        ("x:0", "x"),
    ],
)
def test_signature_key_follows_tfs_rules(name, key):
    assert names.signature_key(name) == key
    assert names.signature_key(key) == key  # TF renames nothing further.


def test_two_names_with_one_key_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"'a b' and 'a_b' would both be served"):
        names.signature_keys(["a b", "a_b"], "output")


def _model_with_inputs(input_names):
    inputs = [keras.Input((1,), name=n) for n in input_names]
    merged = keras.layers.Concatenate()(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(merged))


@pytest.mark.parametrize(
    "input_names",
    [["sepal.length", "petal-width", "1x"], ["_id", "état", "年龄"], ["class", "x"]],
    ids=["punctuation-and-digits", "underscore-and-non-ascii", "keyword"],
)
def test_odd_input_names_export_and_serve_under_their_keys(tmp_path, input_names):
    model = _model_with_inputs(input_names)
    rows = {n: np.full((2, 1), i + 1.0, np.float32) for i, n in enumerate(input_names)}
    exporter = VersionedExporter(str(tmp_path / "m"), warmup_inputs=rows)
    path = exporter.export(model)

    feeds = {names.signature_key(n): v for n, v in rows.items()}
    expected = model(rows).numpy()
    np.testing.assert_allclose(
        c_loader.run(path, "serve", "serving_default", feeds)["out"], expected, 1e-5
    )
    np.testing.assert_allclose(serve_tf2(path, feeds)["out"], expected, rtol=1e-5)
    # TF Serving replays the warm-up on load: the aliases are the keys.
    (request,) = warmup.read(path)[:1]
    assert sorted(request.inputs) == sorted(feeds)
    info = json.loads(open(os.path.join(path, "assets.extra/export_info.json")).read())
    assert info["names"]["inputs"] == {n: names.signature_key(n) for n in input_names}


def test_outputs_whose_keys_collide_are_refused_before_anything_is_written(tmp_path):
    x = keras.Input((2,), name="x")
    model = keras.Model(
        x, {"a b": keras.layers.Dense(1)(x), "a_b": keras.layers.Dense(1)(x)}
    )
    target = tmp_path / "m"
    with pytest.raises(Exception, match=r"'a b' and 'a_b' would both be served as"):
        VersionedExporter(str(target)).export(model)
    assert not target.exists()


def test_outputs_like_the_old_suffix_each_serve_their_own_values(tmp_path):
    x = keras.Input((2,), name="x")
    model = keras.Model(
        x,
        {
            "a b": keras.layers.Dense(1, name="d1")(x),
            "a_b_1": keras.layers.Dense(1, name="d2")(x),
        },
    )
    path = VersionedExporter(str(tmp_path / "m")).export(model)
    rows = np.array([[1.0, 2.0]], np.float32)
    served = serve_tf2(path, {"x": rows})
    expected = model(rows)
    assert sorted(served) == ["a_b", "a_b_1"]
    np.testing.assert_allclose(served["a_b"], expected["a b"], rtol=1e-5)
    np.testing.assert_allclose(served["a_b_1"], expected["a_b_1"], rtol=1e-5)


# The gate.


def test_a_frozen_python_attribute_is_rejected_not_served(tmp_path):
    model, scale = _scaled_model()
    x, _ = classifier_data()
    exporter = VersionedExporter(str(tmp_path / "m"), grace_seconds=0)
    good = exporter.export(model)
    scale.factor = 3.0  # The cached graphs still multiply by 2.

    with pytest.raises(ExportRejectedError, match="failed the publish gate") as e:
        exporter.export(model)

    version = e.value.info["version"]
    assert exporter.versions() == [int(os.path.basename(good))]
    assert e.value.rejected == str(tmp_path / "m" / f"rejected-{version}")
    assert any("'logits'" in p and "apart" in p for p in e.value.problems)
    reason = json.loads(open(os.path.join(e.value.rejected, "rejection.json")).read())
    assert reason["version"] == version and reason["problems"] == e.value.problems
    # The kept copy is what a server would have served: the old factor.
    old = c_loader.run(e.value.rejected, "serve", "serving_default", {"features": x})
    np.testing.assert_allclose(old["logits"], model.layers[2](x * 2.0), rtol=1e-5)
    # The number is not reused, also by a new exporter on the directory.
    later = VersionedExporter(str(tmp_path / "m"), validate=False).export(model)
    assert int(os.path.basename(later)) > version


def test_only_the_newest_rejected_copies_are_kept(tmp_path):
    model, scale = _scaled_model()
    exporter = VersionedExporter(
        str(tmp_path / "m"), validate=PublishGate(keep_rejected=1)
    )
    exporter.export(model)
    rejected = []
    for factor in (3.0, 4.0):
        scale.factor = factor
        with pytest.raises(ExportRejectedError) as e:
            exporter.export(model)
        rejected.append(e.value.info["version"])
    entries = sorted(os.listdir(tmp_path / "m"))
    assert [n for n in entries if n.startswith("rejected-")] == [
        f"rejected-{rejected[-1]}"
    ]


def test_the_metric_gate_refuses_a_version_worse_than_the_best(tmp_path):
    model = classifier()
    exporter = VersionedExporter(
        str(tmp_path / "m"),
        keep=None,
        monitor="val_loss",
        validate=PublishGate(metric_margin=0.1),
    )
    exporter.export(model, metrics={"val_loss": 0.5})
    exporter.export(model, metrics={"val_loss": 0.55})  # Within the margin.
    with pytest.raises(ExportRejectedError, match=r"val_loss=0\.7 is worse"):
        exporter.export(model, metrics={"val_loss": 0.7})
    assert len(exporter.versions()) == 2


def test_async_exports_are_gated_in_the_writer(tmp_path):
    model, scale = _scaled_model()
    exporter = VersionedExporter(str(tmp_path / "m"), async_export=True)
    exporter.export(model)
    exporter.wait()
    scale.factor = 5.0
    exporter.export(model)  # Returns at once; the gate runs in the writer.
    with pytest.raises(ExportRejectedError):
        exporter.wait()
    assert len(exporter.versions()) == 1
    exporter.close()


@keras.saving.register_keras_serializable(package="test_gate")
class EagerOnly(keras.layers.Layer):
    """Answers differently when traced: serving skew in a layer's code."""

    def call(self, x):
        return x * (2.0 if tf.executing_eagerly() else 3.0)


def test_export_saved_model_leaves_nothing_when_the_gate_fails(tmp_path):
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, EagerOnly()(inputs))
    with pytest.raises(GateFailure, match="failed the publish gate") as e:
        export_saved_model(model, str(tmp_path / "m"))
    assert any("'serving_default', output" in p for p in e.value.problems)
    assert os.listdir(tmp_path) == []
    export_saved_model(model, str(tmp_path / "m"), validate=False)
    assert os.listdir(tmp_path) == ["m"]


def test_gate_inputs_that_do_not_fit_are_refused_before_anything_is_written(
    tmp_path,
):
    rows = np.ones((2, 5), np.float32)  # The model takes 4 features.
    with pytest.raises(ValueError, match=r"PublishGate\(inputs=\.\.\.\)\['features'\]"):
        export_saved_model(
            classifier(), str(tmp_path / "m"), validate=PublishGate(inputs=rows)
        )
    assert os.listdir(tmp_path) == []


def test_the_gate_compares_on_the_rows_it_is_given(tmp_path):
    model, scale = _scaled_model()
    exporter = VersionedExporter(
        str(tmp_path / "m"), validate=PublishGate(inputs=np.zeros((3, 4), "float32"))
    )
    exporter.export(model)
    scale.factor = 3.0  # Zeros times any factor are zeros: no difference.
    exporter.export(model)
    assert len(exporter.versions()) == 2


def test_gate_failure_is_a_value_error_naming_the_problems(tmp_path):
    error = GateFailure("/models/m", ["signature 'x' failed"])
    assert isinstance(error, ValueError) and "signature 'x' failed" in str(error)


def test_the_callback_records_a_rejection_and_trains_on(tmp_path):
    model, scale = _scaled_model()
    x, y = classifier_data()
    y = np.eye(3, dtype="float32")[y]

    class Bump(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            scale.factor = 2.0 + epoch  # Changed after the first export.

    exporter = SavedModelExporter(
        str(tmp_path / "m"), log_dir=str(tmp_path / "logs"), on_error="warn"
    )
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[Bump(), exporter])
    assert len(history.history["loss"]) == 3
    assert len(exporter.versions()) == 1  # Only the first export matched.
    acc = events(tmp_path / "logs" / "export")
    assert "export/rejected" in acc.Tags()["tensors"]
    records = [
        json.loads(e.tensor_proto.string_val[0]) for e in acc.Tensors("export/record")
    ]
    rejected = [r for r in records if r["status"] == "rejected"]
    assert rejected and all("apart" in r["error"] for r in rejected)
    assert all(
        r["path"].startswith(str(tmp_path / "m" / "rejected-")) for r in rejected
    )


def test_kerassave_list_shows_rejected_versions_with_their_reasons(tmp_path):
    model, scale = _scaled_model()
    exporter = VersionedExporter(str(tmp_path / "m"))
    exporter.export(model)
    scale.factor = 3.0
    with pytest.raises(ExportRejectedError) as e:
        exporter.export(model)
    command = [sys.executable, "-m", "kerassave_callbacks", "list", str(tmp_path / "m")]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "rejected by the publish gate" in text and e.value.problems[0] in text
    rows = json.loads(
        subprocess.run(
            command + ["--json", "--rejected"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [r.get("status") for r in rows] == [None, "rejected"]
    assert rows[1]["version"] == e.value.info["version"]
    plain = json.loads(
        subprocess.run(command + ["--json"], capture_output=True, text=True).stdout
    )
    assert len(plain) == 1


def test_publish_gate_refuses_bad_values():
    with pytest.raises(ValueError, match="keep_rejected=-1"):
        PublishGate(keep_rejected=-1)
    with pytest.raises(ValueError, match="load_seconds=0"):
        PublishGate(load_seconds=0)
    with pytest.raises(TypeError, match="validate='yes'"):
        VersionedExporter("/tmp/never", validate="yes")


# TF Serving's warm-up replay, as the gate and verify run it.


def _write_warmup(path, requests):
    logs = []
    for request in requests:
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        logs.append(log.SerializeToString())
    warmup.write(path, logs)


def _request(inputs: dict, signature_name="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A published version of the classifier, to copy and spoil."""
    root = tmp_path_factory.mktemp("published")
    return VersionedExporter(str(root / "m")).export(classifier())


_ROW = np.zeros((1, 4), np.float32)


@pytest.mark.parametrize(
    "requests, problem",
    [
        ([_request({"features:0": _ROW})], "input tensor alias not found"),
        ([_request({"features": _ROW}, "predict")], 'key "predict" not found'),
        ([_request({"features": _ROW.astype(np.float64)})], "double"),
        ([_request({"features": _ROW})] * 1001, "more than TF Serving replays"),
    ],
    ids=["alias", "signature_name", "dtype", "1001-records"],
)
def test_warmup_that_tf_serving_would_fail_fails_the_gate_and_verify(
    tmp_path, published, requests, problem
):
    version = tmp_path / "1"
    shutil.copytree(published, version)
    _write_warmup(str(version), requests)
    problems = validation.check(str(version), PublishGate())
    assert any(problem in p for p in problems), problems
    result = subprocess.run(
        [sys.executable, "-m", "kerassave_callbacks", "verify", str(version), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)
    assert any(problem in p for p in row["problems"]), row


def test_a_good_warmup_replays_and_verify_says_ok(tmp_path, published):
    version = tmp_path / "1"
    shutil.copytree(published, version)
    _write_warmup(str(version), [_request({"features": _ROW})])
    assert validation.check(str(version), PublishGate()) == []
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        tf.compat.v1.saved_model.load(sess, ["serve"], str(version))
    assert run_tf1(str(version), "serve", "serving_default", {"features": _ROW})
