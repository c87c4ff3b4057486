"""export_saved_model: bad input is a clear error, and nothing is written."""

from __future__ import annotations

import os
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import SavedModelExistsError, export_saved_model

from conftest import classifier


def test_unbuilt_sequential_without_input_signature(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(ValueError, match="not built and no `input_signature`"):
        export_saved_model(keras.Sequential([keras.layers.Dense(2)]), str(target))
    assert not target.exists()


def test_non_empty_path_raises_an_assertion_error_for_old_callers(tmp_path):
    (tmp_path / "user_file.txt").write_text("keep me")
    with pytest.raises(AssertionError, match="already exists and is not empty"):
        export_saved_model(classifier(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_file.txt"]


def test_existing_file_path_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SavedModelExistsError, match="is an existing file"):
        export_saved_model(classifier(), str(target))
    assert target.read_text() == "x"


def test_empty_existing_directory_is_accepted(tmp_path):
    model = classifier()
    export_saved_model(model, str(tmp_path))
    x = np.ones((2, 4), "float32")
    served = tf.saved_model.load(str(tmp_path), tags=["serve"])
    (out,) = served.signatures["serving_default"](features=tf.constant(x)).values()
    np.testing.assert_allclose(out.numpy(), model(x).numpy(), atol=1e-6)
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith("temp-")]


def test_not_a_model_is_a_type_error(tmp_path):
    match = r"keras.Model \(Keras 3\) or a tf_keras.Model .* model='model.keras'"
    with pytest.raises(TypeError, match=match):
        export_saved_model("model.keras", str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


def test_input_signature_of_non_specs_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="must hold `tf.TensorSpec`s"):
        export_saved_model(
            keras.Sequential([keras.layers.Dense(2)]),
            str(tmp_path / "export"),
            input_signature=[(None, 4)],
        )
    assert not (tmp_path / "export").exists()


def test_target_signature_for_an_unknown_output(tmp_path):
    with pytest.raises(ValueError, match=r"names outputs \['nope'\].*\['logits'\]"):
        export_saved_model(
            classifier(),
            str(tmp_path / "export"),
            target_signature={"nope": tf.TensorSpec([None], tf.int64)},
        )
    assert not (tmp_path / "export").exists()


def test_an_input_named_like_a_target_is_refused(tmp_path):
    features = keras.Input((2,), name="features")
    out_target = keras.Input((1,), name="out_target")
    merged = keras.layers.Concatenate()([features, out_target])
    model = keras.Model(
        [features, out_target], keras.layers.Dense(1, name="out")(merged)
    )
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"input 'out_target' .* output 'out'"):
        export_saved_model(model, str(tmp_path / "export"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    export_saved_model(model, str(tmp_path / "serve"), serving_only=True)
    assert (tmp_path / "serve" / "saved_model.pb").exists()


def test_files_written_into_the_target_meanwhile_are_never_deleted(tmp_path):
    # The target is empty when checked; while the export is traced and
    # written (its temporary appears), someone writes into the target.
    target = tmp_path / "export"
    target.mkdir()
    stop = threading.Event()

    def write_meanwhile():
        while not stop.is_set():
            if any(p.name.startswith("temp-") for p in tmp_path.iterdir()):
                (target / "theirs.txt").write_text("keep me")
                return
            time.sleep(0.001)

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    try:
        with pytest.raises(SavedModelExistsError, match="left as it is"):
            export_saved_model(classifier(), str(target))
    finally:
        stop.set()
        writer.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert (target / "theirs.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_parent_is_a_permission_error_naming_the_path(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="saved_model_path=.*ro/export"):
            export_saved_model(classifier(), str(parent / "export"))
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []
