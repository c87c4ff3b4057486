"""What the two Keras adapters share: helpers that read only public Keras
API or plain Python, so `keras3` and `keras2` never import each other.

Imports neither Keras.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf
from absl import logging

from kerassave_callbacks import layout

# Written into a Keras 2 export's JSON config (as Keras 2's own `to_json`
# does): how the loader knows which Keras wrote an export.
VERSION_KEY = "keras_version"


def has_loss_of(model, prefix: str) -> bool:
    """`has_loss` of a model whose Keras classes live under `prefix`. An
    empty loss container (Keras 2's for `compile(loss=None)`) is no loss."""
    loss = getattr(model, "loss", None)
    empty = loss is None or (isinstance(loss, (dict, list, tuple)) and not loss)
    return (
        not empty
        or overrides_of(model, "compute_loss", prefix) is not None
        or bool(model.losses)
    )


def overrides_of(model, method: str, prefix: str) -> str | None:
    """`overrides` for a Keras whose own classes live under `prefix`."""
    for cls in type(model).__mro__:
        if method in cls.__dict__:
            return None if cls.__module__.startswith(prefix) else cls.__qualname__
    return None


def strategy_of(model) -> tf.distribute.Strategy:
    """The distribution strategy `model` was built under (any Keras)."""
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def uses_ema(model) -> bool:
    """True when `fit` ends by moving the optimizer's EMA into the weights."""
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


def warn_no_config(model, error: Exception) -> None:
    logging.warning(
        "Model %r has no get_config(), so the export holds no %s and "
        "load_from_saved_model cannot rebuild it (tf.saved_model.load still "
        "can): %s",
        model.name,
        layout.MODEL_JSON,
        error,
    )


def dumps(config: dict) -> str:
    """JSON of a config, numpy scalars and arrays as lists."""
    return json.dumps(config, default=_json_default)


def _json_default(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def assets_of(layers) -> dict[str, bytes]:
    """`layer_assets` of these layers, indexed by their position."""
    assets = {}
    for index, layer in enumerate(layers):
        if not hasattr(layer, "save_assets"):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            layer.save_assets(tmp)  # Local paths only, as Keras writes them.
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    assets[f"{index}/{name}"] = f.read()
    return assets


def any_distributed(variables) -> bool:
    """True when any of these `tf.Variable`s is distributed by a strategy."""
    return any(isinstance(v, tf.distribute.DistributedValues) for v in variables)
