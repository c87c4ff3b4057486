"""The adapter for Keras 3 (`keras`, which `tf.keras` is by default).

One of two adapters with the same functions (the other is `keras2`, for
`tf_keras`): everything the mode graphs, the loader, the exporter and the
callback need to know about a Keras model goes through them, so that no
other module branches on the Keras version. `keras_api.adapter_for` picks
the adapter of a model.

Keras 3 has no public API for three things used here, the only Keras
internals the package reads:
- the input structure of a built model (functional, Sequential or
  subclassed and already called): `model.export()` uses
  `keras.src.export.export_utils.get_input_signature`, and so do we, only
  when the caller gave no `input_signature`;
- every nested layer of a model (`Layer._flatten_layers`), to finalize the
  state of preprocessing layers after their variables are restored, as
  Keras' own loading does in `load_own_variables`;
- whether `keras.config.enable_unsafe_deserialization()` was called.
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf
from keras.src.export import export_utils

from kerassave_callbacks.core import _keras_common

# The module prefix of Keras' own classes (see `overrides`).
_PREFIX = "keras."


def version() -> str:
    return keras.__version__


def is_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_layer(obj) -> bool:
    return isinstance(obj, keras.layers.Layer)


def is_sequential(model) -> bool:
    return isinstance(model, keras.Sequential)


def inferred_input_signature(model: keras.Model):
    """The input structure of a built model as `tf.TensorSpec`s.

    Raises:
      ValueError: the model was never built or called.
    """
    signature = export_utils.get_input_signature(model)
    return tf.nest.map_structure(export_utils.make_tf_tensor_spec, signature)


def all_layers(model: keras.Model) -> list:
    """Every layer inside `model`, nested ones included (no public API)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def _values(keras_variables) -> list[tf.Variable]:
    # The underlying tf.Variable, not the Keras wrapper: TF1 session loaders
    # cannot restore a SavedModel that tracks the wrappers.
    return [v.value for v in keras_variables]


def model_variables(model: keras.Model) -> list[tf.Variable]:
    """The model's weights, as the `tf.Variable`s that hold them."""
    return _values(model.variables)


def optimizer_variables(model: keras.Model) -> list[tf.Variable]:
    """The optimizer's state (iteration count first, then its slots)."""
    return _values(model.optimizer.variables)


def metric_variables(model: keras.Model) -> list[tf.Variable]:
    """The state of the compiled loss tracker and metrics."""
    return _values(model.metrics_variables)


def is_compiled(model: keras.Model) -> bool:
    """True when the model is compiled with an optimizer."""
    return getattr(model, "optimizer", None) is not None and bool(
        getattr(model, "compiled", False)
    )


def has_loss(model: keras.Model) -> bool:
    """True when training the model minimizes something."""
    return _keras_common.has_loss_of(model, _PREFIX)


def overrides(model, method: str) -> str | None:
    """The class that overrides Keras' `method`, or None for Keras' own."""
    return _keras_common.overrides_of(model, method, _PREFIX)


def build_optimizer(model: keras.Model) -> None:
    """Creates the optimizer's slots (under a strategy, in its scope)."""
    if model.optimizer.built:
        return
    with _keras_common.strategy_of(model).scope():
        model.optimizer.build(model.trainable_variables)


def step(model: keras.Model, x, targets, training: bool, predicted=None):
    """One step of Keras' own `train_step` (or `test_step`), to be traced.

    Args:
      model: the compiled model.
      x: the model's inputs.
      targets: a function of the predictions returning the targets in
        their structure.
      training: apply the optimizer (train) or not (eval).
      predicted: a function of `x` returning the predictions, already
        traced (eval calls the serve function); None calls the model.

    Returns:
      (loss, predictions, {metric name: value}), the loss tracker left out.
    """
    with tf.GradientTape() as tape:
        y_pred = predicted(x) if predicted else model(x, training=training)
        y = targets(y_pred)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=training)
        scaled = model.optimizer.scale_loss(loss)
    if training:
        weights = model.trainable_variables
        model.optimizer.apply(tape.gradient(scaled, weights), weights)
    return loss, y_pred, model.compute_metrics(x, y, y_pred)


def uses_ema(model: keras.Model) -> bool:
    """True when `fit` ends by moving the optimizer's EMA into the weights."""
    return _keras_common.uses_ema(model)


def to_json(model: keras.Model) -> str | None:
    """`model.to_json()`, or None with a warning when the model has no config.

    Keras 3 puts the build and compile configs in it. The compile config
    names the optimizer as `compile()` was given it; the one saved is the
    model's actual optimizer, so that one Keras wrapped (a
    `LossScaleOptimizer` under a mixed precision policy) is rebuilt as it
    was, whatever the global policy is when the export is loaded.
    """
    try:
        config = json.loads(model.to_json())
    except NotImplementedError as e:
        _keras_common.warn_no_config(model, e)
        return None
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and config.get("compile_config"):
        config["compile_config"]["optimizer"] = keras.optimizers.serialize(optimizer)
    return _keras_common.dumps(config)


def wrote(config: dict) -> bool:
    """True for the JSON config of a model this adapter wrote."""
    return _keras_common.VERSION_KEY not in config


def from_config(config: dict, custom_objects, unsafe: bool) -> keras.Model:
    """Builds (and compiles, with a compile config) the model of `config`."""
    return keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=not unsafe
    )


def registered(name: str, custom_objects) -> bool:
    """True when `name` is in `custom_objects` or registered with
    `keras.saving.register_keras_serializable`."""
    return keras.saving.get_registered_object(name, custom_objects) is not None


def unsafe_deserialization_enabled() -> bool:
    """True after `keras.config.enable_unsafe_deserialization()`.

    Keras has a setter but no public getter for it.
    """
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is False


def layer_assets(model: keras.Model) -> dict[str, bytes]:
    """What `layer.save_assets` writes, as `<layer index>/<file>` -> bytes.

    Keras keeps state that is no variable there (the vocabulary of an
    adapted lookup layer); `restore_layer_state` gives it back to the layer
    of the same index with `load_assets`. (Keras 2 layers follow the same
    protocol.)
    """
    return _keras_common.assets_of(all_layers(model))


def restore_layer_state(model: keras.Model, assets: dict[str, str]) -> None:
    """Finishes loading each layer once its variables hold their values.

    Adapted preprocessing layers derive working state from their variables
    when Keras loads them (Normalization's mean from its adapt_mean): each
    gets the values it now holds the same way. Then the state Keras keeps
    in files (a lookup layer's vocabulary) comes back from `assets`, layer
    index -> a local folder of that layer's `layer_assets`.
    """
    for index, layer in enumerate(all_layers(model)):
        if hasattr(layer, "finalize_state"):
            layer.load_own_variables(
                {str(i): v.numpy() for i, v in enumerate(layer.weights)}
            )
        if hasattr(layer, "load_assets") and str(index) in assets:
            layer.load_assets(assets[str(index)])


def variable_name(variable) -> str:
    """The Keras path of a variable (its TF name for a `tf.Variable`)."""
    return getattr(variable, "path", None) or variable.name


def steps_only_on_a_copy(model) -> bool:
    """True when the train and eval steps of `model` must be traced on a
    single-device copy: its variables are distributed (MirroredStrategy).

    Traced outside the strategy's scope, Keras 3's step on mirrored
    variables applies each update once per replica (two replicas: steps
    twice as large as `train_on_batch`'s), so the graphs are traced on a
    copy with plain variables, as for Keras 2 (`ModeGraphs`).
    """
    return _keras_common.any_distributed(model_variables(model))
