"""The models the benchmarks measure, built the same way in each script,
and the stopwatch that times their exports."""

from __future__ import annotations

import time

import keras


def by_name(name: str) -> keras.Model:
    """`Dense300` (`dense_stack(300)`, the many-variable model #30 measures)
    or a `keras.applications` name."""
    if name.startswith("Dense") and name[5:].isdigit():
        return dense_stack(int(name[5:]))
    return application(name)


def application(name: str) -> keras.Model:
    """A `keras.applications` model built with weights=None (nothing is
    downloaded) at 96x96 with 10 classes, compiled with Adam."""
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(96, 96, 3), classes=10
    )
    return _compiled(model, "sparse_categorical_crossentropy")


def dense_stack(layers: int) -> keras.Model:
    """`layers` Dense(16) layers on 16 inputs, compiled with Adam: many
    small variables (300 layers: about 1800 with the optimizer's)."""
    stack = [keras.Input((16,), name="x")]
    stack += [keras.layers.Dense(16, name=f"d{i}") for i in range(layers)]
    return _compiled(keras.Sequential(stack, name=f"dense{layers}"), "mse")


def _compiled(model: keras.Model, loss: str) -> keras.Model:
    model.compile(optimizer="adam", loss=loss)
    model.optimizer.build(model.trainable_variables)
    return model


def seconds(fn) -> float:
    """Wall seconds `fn()` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
