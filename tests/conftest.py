"""Small real Keras models shared by the tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(7)


def classifier(compiled: bool = True) -> keras.Model:
    """A functional 4 -> 3 classifier with a sparse categorical loss."""
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    model = keras.Model(inputs, outputs, name="classifier")
    if compiled:
        model.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


def classifier_data(n: int = 32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.integers(0, 3, size=(n,))
    return x, y


def two_tower(dict_io: bool) -> keras.Model:
    """A functional model with two inputs and two outputs (lists or dicts)."""
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([a, b])
    score = keras.layers.Dense(1, name="score")(merged)
    label = keras.layers.Dense(2, activation="softmax", name="label")(merged)
    if dict_io:
        model = keras.Model({"a": a, "b": b}, {"score": score, "label": label})
        loss = {"score": "mse", "label": "categorical_crossentropy"}
    else:
        model = keras.Model([a, b], [score, label])
        loss = ["mse", "categorical_crossentropy"]
    model.compile(optimizer="sgd", loss=loss)
    return model


class Options:
    """A constructor argument Keras cannot serialize."""


class Doubler(keras.Model):
    """A subclassed model whose config Keras cannot serialize."""

    def __init__(self, options):
        super().__init__()
        self.options = options
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs) * 2.0


@keras.saving.register_keras_serializable(package="tests")
class ConfigurableDoubler(Doubler):
    """A subclassed model that implements get_config."""

    def __init__(self, **kwargs):
        super().__init__(options=None, **kwargs)

    def get_config(self):
        return {}
