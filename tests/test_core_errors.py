"""export_saved_model: bad input is a clear error, and nothing is written."""

from __future__ import annotations

import keras
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
    export_saved_model(classifier(), str(tmp_path))
    assert (tmp_path / "saved_model.pb").exists()


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
