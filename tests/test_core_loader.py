"""load_from_saved_model: the rebuilt Keras model, and what it refuses."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import export_saved_model, load_from_saved_model

from conftest import ConfigurableDoubler, classifier, classifier_data
from helpers import assert_close, trained_export


def test_loaded_model_predicts_like_the_original(tmp_path):
    model, path, x, _ = trained_export(tmp_path)
    loaded = load_from_saved_model(path)
    assert isinstance(loaded, keras.Model)
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_loaded_model_resumes_training_with_the_optimizer_state(tmp_path):
    model, path, x, y = trained_export(tmp_path)
    loaded = load_from_saved_model(path)

    assert int(loaded.optimizer.iterations) == 8
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for original, resumed in zip(
        model.get_weights(), loaded.get_weights(), strict=True
    ):
        assert_close(resumed, original)


def test_compile_false_returns_an_uncompiled_model(tmp_path):
    _, path, _, _ = trained_export(tmp_path)
    assert (
        getattr(load_from_saved_model(path, compile=False), "optimizer", None) is None
    )


def test_custom_objects_rebuild_a_subclassed_model(tmp_path):
    class Scaled(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 3.0

    model = keras.Sequential(
        [keras.Input((2,), name="x"), keras.layers.Dense(2), Scaled(name="scaled")]
    )
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    x = np.ones((1, 2), "float32")

    # Not imported from the module the export names: refused, naming it.
    with pytest.raises(ValueError, match=r"test_core_loader\.Scaled.*custom_objects"):
        load_from_saved_model(path)
    loaded = load_from_saved_model(path, custom_objects={"Scaled": Scaled})
    assert_close(loaded(x), model(x))


def test_registered_subclassed_model_is_rebuilt_and_built(tmp_path):
    model = ConfigurableDoubler()
    x = np.ones((3, 4), "float32")
    model(x)
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    assert_close(load_from_saved_model(path)(x), model(x))


def _lambda_export(tmp_path):
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")]
    )
    path = str(tmp_path / "export")
    export_saved_model(model, path)
    return path


def test_lambda_layers_are_refused_by_default(tmp_path):
    path = _lambda_export(tmp_path)
    with pytest.raises(
        ValueError, match=r"Lambda layers \['plus_one'\].*safe_mode=False"
    ):
        load_from_saved_model(path)


def test_lambda_layers_load_when_the_caller_opts_in(tmp_path):
    path = _lambda_export(tmp_path)
    loaded = load_from_saved_model(path, safe_mode=False)
    assert_close(loaded(np.zeros((1, 2), "float32")), [[1.0, 1.0]])


def test_a_path_without_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No SavedModel at .*version"):
        load_from_saved_model(str(tmp_path))


def test_an_export_without_json_points_to_tf_saved_model_load(tmp_path):
    _, path, _, _ = trained_export(tmp_path)
    tf.io.gfile.remove(path + "/assets/saved_model.json")
    with pytest.raises(
        ValueError, match=r"has no assets/saved_model.json.*tf\.saved_model\.load"
    ):
        load_from_saved_model(path)


def test_loads_from_ram_filesystem():
    model = classifier()
    path = "ram://loader/model"
    export_saved_model(model, path)
    x, _ = classifier_data()
    assert_close(
        load_from_saved_model(path).predict(x, verbose=0), model.predict(x, verbose=0)
    )
