"""The serve graph of a full export, read by TF2 tools; models with lookup
tables and string inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import convert_to_constants

from kerassave_callbacks import (
    SavedModelExporter,
    VersionedExporter,
    export_saved_model,
    load_from_saved_model,
)
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import keras3

from conftest import classifier, classifier_data
from helpers import (
    assert_close,
    run_tf1,
    saved_model_cli,
    serve_tf2,
    trained_export,
    value_bytes,
)

# 1. TF2 tools read the serve graph of a full export.


def test_each_graph_exposes_the_variables_its_signature_uses(tmp_path):
    model, path, _, _ = trained_export(tmp_path)
    metrics = keras3.metric_variables(model)
    optimizer = model.optimizer.variables
    loaded = {
        t: tf.saved_model.load(path, tags=[t]) for t in ("serve", "train", "eval")
    }

    # Serving: the weights with their values, and no optimizer state.
    assert value_bytes(loaded["serve"].variables) == value_bytes(model.weights)
    assert len(loaded["eval"].variables) == len(model.weights) + len(metrics)
    assert len(loaded["train"].variables) == (
        len(model.weights) + len(optimizer) + len(metrics)
    )
    iterations = int(model.optimizer.iterations.numpy())
    scalars = [int(v.numpy()) for v in loaded["train"].variables if v.shape.rank == 0]
    assert iterations in scalars


# The serve graph of an export with more signatures than serving_default
# stays readable for its serving_default.
WITH_SIGNATURES = pytest.mark.parametrize(
    "signatures",
    [
        None,
        {"classify": signatures_lib.classify(), "examples": signatures_lib.examples()},
    ],
    ids=["default", "with_classify"],
)


@WITH_SIGNATURES
def test_freezing_the_serve_signature_leaves_no_variable_ops(tmp_path, signatures):
    model, path, x, _ = trained_export(tmp_path, signatures)
    fn = tf.saved_model.load(path, tags=["serve"]).signatures["serving_default"]

    frozen = convert_to_constants.convert_variables_to_constants_v2(fn)

    graph = frozen.graph.as_graph_def()
    ops = {n.op for n in graph.node} | {
        n.op for f in graph.library.function for n in f.node_def
    }
    assert not ops & {"VarHandleOp", "ReadVariableOp"}
    out = frozen(tf.constant(x))
    assert_close(out["logits"] if isinstance(out, dict) else out[0], model(x))


@WITH_SIGNATURES
def test_tf2onnx_converts_the_serve_graph_and_onnxruntime_predicts(
    tmp_path, signatures
):
    model, path, x, _ = trained_export(tmp_path, signatures)
    onnx_path = str(tmp_path / "model.onnx")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            path,
            "--tag",
            "serve",
            "--signature_def",
            "serving_default",
            "--output",
            onnx_path,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Unsupported ops" not in out.stderr

    session = onnxruntime.InferenceSession(onnx_path)
    (inp,) = session.get_inputs()
    (logits,) = session.run(None, {inp.name: x})
    assert_close(logits, model(x))


def test_saved_model_cli_compiles_the_serve_graph_ahead_of_time(tmp_path):
    # XLA's AOT compiler freezes the variables of the serve graph: it needs
    # them in the graph, and a static input shape.
    path = str(tmp_path / "export")
    export_saved_model(
        classifier(),
        path,
        input_signature=[tf.TensorSpec([2, 4], tf.float32, name="features")],
    )
    prefix = str(tmp_path / "aot" / "model")
    command = [
        "aot_compile_cpu",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def_key",
        "serving_default",
        "--output_prefix",
        prefix,
        "--cpp_class",
        "Classifier",
    ]
    out = subprocess.run(
        saved_model_cli() + command, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    header = open(prefix + ".h").read()
    assert "class Classifier final" in header
    assert "arg_feed_features_data" in header
    assert "result_fetch_logits_data" in header
    assert os.path.getsize(prefix + ".o") > 0


GRADIENTS = """
import sys
import numpy as np
import tensorflow as tf
path, x = sys.argv[1], np.load(sys.argv[2])
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    inputs = sess.graph.get_tensor_by_name(sig.inputs["features"].name)
    logits = sess.graph.get_tensor_by_name(sig.outputs["logits"].name)
    (grad,) = sess.run(tf.compat.v1.gradients(logits, inputs), {inputs: x})
np.save(sys.argv[3], grad)
for tag in ("serve", "eval", "train"):
    tf.saved_model.load(path, tags=[tag])
print("ok")
"""


def test_loading_logs_no_custom_gradient_warning_and_tf1_differentiates(tmp_path):
    # swish is a TF custom gradient: the ops of its forward pass carry it by
    # name, which TF's loaders look up in vain in a fresh process.
    x, y = classifier_data()
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="swish")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.eye(3)[y], epochs=1, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-c", GRADIENTS, path, tmp_path / "x.npy", tmp_path / "g"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "custom gradient" not in out.stderr

    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        total = tf.reduce_sum(model(tensor))
    assert_close(np.load(tmp_path / "g.npy"), tape.gradient(total, tensor))


# 2. Lookup tables and other resources.

TEXTS = np.array(
    [
        "a great film",
        "truly great acting",
        "an awful plot",
        "awful and boring",
        "great fun",
        "boring film",
    ]
)
LABELS = np.array([1, 1, 0, 0, 1, 0], dtype="float32")


def _strings(texts=TEXTS):
    return tf.constant(texts[:, None])


def _text_vectorization_model():
    vectorize = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=4)
    vectorize.adapt(TEXTS)
    inputs = keras.Input((1,), dtype="string", name="text")
    hidden = keras.layers.Embedding(30, 4)(vectorize(inputs))
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    return keras.Model(inputs, keras.layers.Dense(1, name="score")(hidden))


def _string_lookup_model():
    lookup = keras.layers.StringLookup(output_mode="multi_hot")
    lookup.adapt(tf.strings.split(TEXTS).flat_values)
    inputs = keras.Input((3,), dtype="string", name="text")
    return keras.Model(inputs, keras.layers.Dense(1, name="score")(lookup(inputs)))


def _integer_lookup_model():
    lookup = keras.layers.IntegerLookup(output_mode="one_hot")
    lookup.adapt(np.array([3, 7, 7, 11, 42]))
    inputs = keras.Input((), dtype="int64", name="code")
    return keras.Model(inputs, keras.layers.Dense(1, name="score")(lookup(inputs)))


@keras.saving.register_keras_serializable(package="serve_graph")
class TableLayer(keras.layers.Layer):
    """A custom layer that maps words to ids with its own tf.lookup table."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        words = tf.constant(["great", "awful", "boring", "film"])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(words, tf.range(1, 5, dtype=tf.int64)),
            default_value=0,
        )

    def call(self, words):
        return tf.cast(self.table.lookup(words), "float32")


@keras.saving.register_keras_serializable(package="serve_graph")
class TrainingTableLayer(keras.layers.Layer):
    """Scales its input by a factor from its own table, in training only:
    the serve signature never uses the table."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([0], tf.int64), tf.constant([3.0])
            ),
            default_value=1.0,
        )

    def call(self, x, training=False):
        if training:
            return x * self.table.lookup(tf.constant(0, tf.int64))
        return x


def _custom_table_model():
    inputs = keras.Input((3,), dtype="string", name="text")
    ids = TableLayer()(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="score")(ids))


def _words():
    return tf.strings.split(TEXTS).to_tensor("", shape=[None, 3])


RESOURCE_MODELS = {
    "text_vectorization": (_text_vectorization_model, _strings, "text"),
    "string_lookup": (_string_lookup_model, _words, "text"),
    "integer_lookup": (
        _integer_lookup_model,
        lambda: tf.constant([3, 7, 99, 11, 42, 7], tf.int64),
        "code",
    ),
    "custom_table": (_custom_table_model, _words, "text"),
}


def test_a_table_only_the_train_step_uses_trains_in_a_tf1_session(tmp_path):
    # The train signature is saved by tf.saved_model.save here, since no
    # serve signature holds its table (`direct_signatures`).
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1, name="y")(TrainingTableLayer()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 2), "float32")
    y = np.zeros((4, 1), "float32")
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    (serve,) = run_tf1(path, "serve", "serving_default", {"x": x})
    assert_close(serve["y"], model.predict(x, verbose=0))
    (run,) = run_tf1(path, "train", "train", {"x": x, "y_target": y})
    # The loss of the step, before its update: with x tripled by the table.
    assert_close(run["loss"], model.train_on_batch(x, y, return_dict=True)["loss"])


@pytest.mark.parametrize(
    "make, data, name", RESOURCE_MODELS.values(), ids=RESOURCE_MODELS.keys()
)
def test_models_with_lookup_tables_export_serve_train_and_load(
    make, data, name, tmp_path
):
    model = make()
    model.compile(optimizer="adam", loss="mse")
    x, y = data(), LABELS[:, None]
    model.fit(x, y, epochs=2, batch_size=3, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    expected = model.predict(x, verbose=0)
    feed = x.numpy()

    # TF2, and a TF1 session as TF Serving loads it (the init op fills the
    # tables).
    assert_close(serve_tf2(path, {name: feed})["score"], expected)
    (tf1,) = run_tf1(path, "serve", "serving_default", {name: feed})
    assert_close(tf1["score"], expected)
    # The train signature trains from strings in a TF1 session.
    runs = run_tf1(path, "train", "train", {name: feed, "score_target": y}, runs=3)
    loaded = load_from_saved_model(path)
    keras_losses = []
    for _ in range(3):
        loaded.reset_metrics()
        keras_losses.append(loaded.train_on_batch(x, y, return_dict=True)["loss"])
    assert_close([r["loss"] for r in runs], keras_losses)
    # The loader gives the tables back.
    fresh = load_from_saved_model(path)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected)


def test_a_string_model_exports_during_fit_and_serves_strings(tmp_path):
    model = _text_vectorization_model()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    exporter = SavedModelExporter(
        str(tmp_path), keep=2, grace_seconds=0, serving_only=True
    )
    model.fit(
        _strings(),
        LABELS[:, None],
        epochs=3,
        batch_size=3,
        verbose=0,
        callbacks=[exporter],
    )

    newest = os.path.join(tmp_path, str(exporter.versions()[-1]))
    served = serve_tf2(newest, {"text": TEXTS[:, None].astype(object)})["score"]
    assert_close(served, model.predict(_strings(), verbose=0))


UNTRACKED = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(tf.constant(["a"]), tf.constant([1], tf.int64)),
    default_value=0,
)


class GlobalTable(keras.layers.Layer):
    """Uses a table it does not own: nothing tracks it."""

    def call(self, words):
        return tf.cast(UNTRACKED.lookup(words), "float32")


def test_a_serve_graph_with_no_variables_loads_everywhere(tmp_path):
    # A lookup alone: the serve graph has no variable to restore.
    lookup = keras.layers.StringLookup(output_mode="multi_hot")
    lookup.adapt(tf.strings.split(TEXTS).flat_values)
    inputs = keras.Input((3,), dtype="string", name="text")
    model = keras.Model(inputs, lookup(inputs))
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "export")
    export_saved_model(model, path)

    expected = model.predict(_words(), verbose=0)
    (tf1,) = run_tf1(path, "serve", "serving_default", {"text": _words().numpy()})
    np.testing.assert_array_equal(tf1[lookup.name], expected)
    assert not tf.saved_model.load(path, tags=["serve"]).variables
    served = serve_tf2(path, {"text": _words().numpy()})
    np.testing.assert_array_equal(served[lookup.name], expected)
    feeds = {"text": _words().numpy(), f"{lookup.name}_target": expected}
    (train,) = run_tf1(path, "train", "train", feeds)
    assert train["loss"] == 0.0


def test_an_untracked_resource_is_a_clear_error_not_an_assertion(tmp_path):
    inputs = keras.Input((3,), dtype="string", name="text")
    model = keras.Model(inputs, GlobalTable()(inputs), name="global_table_model")
    with pytest.raises(ValueError, match="model 'global_table_model'") as caught:
        export_saved_model(model, str(tmp_path / "export"), serving_only=True)
    assert not isinstance(caught.value, AssertionError)
    assert not (tmp_path / "export").exists()


def test_classifier_still_serves_after_freezing_support(tmp_path):
    # The variables collection must not change what TF1 loaders do.
    x, _ = classifier_data()
    model = classifier()
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    (tf1,) = run_tf1(path, "serve", "serving_default", {"features": x})
    assert_close(tf1["logits"], model(x))


def test_only_the_train_graph_can_save_its_variables(tmp_path):
    _, path, _, _ = trained_export(tmp_path)
    for tag, saves in (("train", True), ("serve", False), ("eval", False)):
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            saver = tf.compat.v1.saved_model.load(sess, [tag], path).saver_def
            target = str(tmp_path / f"ckpt-{tag}")
            feed = {saver.filename_tensor_name: target}
            if saves:
                sess.run(saver.save_tensor_name, feed)
                saved = dict(tf.train.list_variables(target))
                exported = dict(tf.train.list_variables(path + "/variables/variables"))
                del exported["_CHECKPOINTABLE_OBJECT_GRAPH"]
                assert saved == exported
            else:  # Loudly, never a silent no-op.
                with pytest.raises((KeyError, ValueError), match="does not exist"):
                    sess.run(saver.save_tensor_name, feed)


def test_a_string_model_with_warmup_round_trips_through_ram_filesystem():
    from kerassave_callbacks.core import warmup

    model = _text_vectorization_model()
    model.compile(optimizer="adam", loss="mse")
    path = "ram://kerassave_serve_graph/text_model"
    export_saved_model(model, path, warmup_inputs=TEXTS[:2, None].astype(object))

    assert len(warmup.read(path)) == 2
    served = serve_tf2(path, {"text": TEXTS[:, None].astype(object)})["score"]
    assert_close(served, model.predict(_strings(), verbose=0))
    loaded = load_from_saved_model(path)
    np.testing.assert_array_equal(
        loaded.predict(_strings(), verbose=0), model.predict(_strings(), verbose=0)
    )


@pytest.mark.parametrize("path", ["ram://", "ram://top_level_only", "/"])
def test_export_saved_model_refuses_a_file_system_root(path):
    with pytest.raises(ValueError, match="root of a file system|already exists"):
        export_saved_model(classifier(), path)


def test_a_re_adapted_lookup_table_is_exported_not_the_old_one(tmp_path):
    from kerassave_callbacks import VersionedExporter

    lookup = keras.layers.StringLookup()
    lookup.adapt(tf.constant(["great", "film"]))
    inputs = keras.Input((3,), dtype="string", name="text")
    ids = keras.ops.cast(lookup(inputs), "float32")
    model = keras.Model(inputs, keras.layers.Dense(1, name="score")(ids))
    model.compile(optimizer="adam", loss="mse")
    exporter = VersionedExporter(str(tmp_path), keep=None)
    exporter.export(model)

    lookup.adapt(tf.strings.split(TEXTS).flat_values)  # A new vocabulary.
    newest = exporter.export(model)
    exporter.close()

    words = _words()
    served = serve_tf2(newest, {"text": words.numpy()})["score"]
    assert_close(served, model.predict(words, verbose=0))


def test_signature_outputs_keep_their_static_shapes(tmp_path):
    model, path, _, _ = trained_export(tmp_path)
    served = tf.saved_model.load(path, tags=["serve"]).signatures["serving_default"]
    assert served.structured_outputs["logits"].shape.as_list() == [None, 3]
    for tag in ("train", "eval"):
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            meta = tf.compat.v1.saved_model.load(sess, [tag], path)
            outputs = meta.signature_def[tag].outputs
            shapes = {
                key: sess.graph.get_tensor_by_name(t.name).shape.as_list()
                for key, t in outputs.items()
            }
        assert shapes["loss"] == []
        assert shapes["predictions/logits"] == [None, 3]


FINGERPRINT_LOAD = """
import sys
import tensorflow as tf
tf.get_logger().setLevel("INFO")
from absl import logging
logging.set_verbosity(logging.INFO)
for tags in (["serve"], ["train"]):
    tf.saved_model.load(sys.argv[1], tags=tags)
print(tf.saved_model.experimental.read_fingerprint(sys.argv[1]).checkpoint_hash)
"""


@pytest.mark.parametrize(
    "options", [{}, {"serving_only": True}], ids=["full", "serving_only"]
)
def test_every_export_has_the_fingerprint_of_its_files(tmp_path, options):
    model = classifier()
    x, y = classifier_data()
    exporter = VersionedExporter(str(tmp_path), keep=None, **options)
    model.fit(x, y, epochs=1, verbose=0)  # Builds Adam: the graphs stay.
    first = exporter.export(model)
    model.fit(x, y, epochs=1, verbose=0)
    second = exporter.export(model)

    a, b = (tf.saved_model.experimental.read_fingerprint(p) for p in (first, second))
    assert a.saved_model_checksum == b.saved_model_checksum  # The same graphs,
    assert a.checkpoint_hash != b.checkpoint_hash  # other weights.
    assert a.saved_model_checksum != 0 and a.signature_def_hash != 0


def test_loaders_find_the_fingerprint(tmp_path):
    path = tmp_path / "export"
    export_saved_model(classifier(), str(path))
    out = subprocess.run(
        [sys.executable, "-c", FINGERPRINT_LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Fingerprint not found" not in out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) != 0


def test_a_text_export_has_no_zero_fingerprint(tmp_path):
    # TF fingerprints only saved_model.pb; of a .pbtxt it would write zeros.
    export_saved_model(classifier(), str(tmp_path / "text"), as_text=True)
    assert sorted(os.listdir(tmp_path / "text")) == [
        "assets",
        "saved_model.pbtxt",
        "variables",
    ]


def test_tfsmlayer_calls_a_serving_only_export_as_a_keras_export(tmp_path):
    model = classifier()
    x, _ = classifier_data()
    export_saved_model(model, str(tmp_path / "serve"), serving_only=True)

    layer = keras.layers.TFSMLayer(str(tmp_path / "serve"))  # Endpoint "serve".
    out = layer(tf.constant(x))

    np.testing.assert_allclose(
        np.asarray(out["logits"]), model.predict(x, verbose=0), atol=1e-5
    )
    # The endpoint is the signature's own trace, not a second one.
    saved = saved_model_pb2.SavedModel.FromString(
        (tmp_path / "serve" / "saved_model.pb").read_bytes()
    )
    (meta,) = saved.meta_graphs
    forward = [
        f.signature.name
        for f in meta.graph_def.library.function
        if any(n.op == "MatMul" for n in f.node_def)
    ]
    assert len(forward) == 1, forward
