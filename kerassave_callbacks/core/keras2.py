"""The adapter for Keras 2 (`tf_keras`, or `tf.keras` with
`TF_USE_LEGACY_KERAS=1`).

The same functions as `keras3` (see there); importing this module imports
`tf_keras`, so `keras_api` imports it only for a `tf_keras` model or export.
Keras 2 internals read here: `Model._is_compiled` (no public flag),
`Layer._flatten_layers` (every nested layer), whether unsafe
deserialization was enabled (a setter, no getter) and a legacy optimizer's
`_create_all_weights` (its slots, before its first step).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from kerassave_callbacks.core import _keras_common

VERSION_KEY = _keras_common.VERSION_KEY
_PREFIX = "tf_keras."


def version() -> str:
    return tf_keras.__version__


def is_model(obj) -> bool:
    return isinstance(obj, tf_keras.Model)


def is_layer(obj) -> bool:
    return isinstance(obj, tf_keras.layers.Layer)


def is_sequential(model) -> bool:
    return isinstance(model, tf_keras.Sequential)


def inferred_input_signature(model):
    """The input structure of a built model as `tf.TensorSpec`s.

    Raises:
      ValueError: the model was never built or called.
    """
    spec = model.save_spec(dynamic_batch=True) if model.built else None
    if spec is None:
        raise ValueError(f"Model {model.name!r} was never called on data.")
    args, kwargs = spec
    if kwargs or len(args) != 1:
        raise ValueError(
            f"Model {model.name!r} was called with {len(args)} positional and "
            f"{sorted(kwargs)} keyword arguments; pass `input_signature`."
        )
    return args[0]


def all_layers(model) -> list:
    """Every layer inside `model`, nested ones included (no public API)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def model_variables(model) -> list[tf.Variable]:
    """The model's weights (not the vocabulary handlers that lookup layers
    list among them: their tables are saved as resources and assets)."""
    return [v for v in model.variables if isinstance(v, tf.Variable)]


def optimizer_variables(model) -> list[tf.Variable]:
    """The optimizer's state: its `variables` (iteration count first, then
    its slots), then the others it tracks (the learning rate, which
    `ReduceLROnPlateau` may have changed), in the order it tracks them."""
    optimizer = model.optimizer
    variables = optimizer.variables
    # A list for Keras 2's optimizers, a method for its legacy ones.
    found = list(variables() if callable(variables) else variables)
    known = {id(v) for v in found}
    for obj in tf.train.TrackableView(optimizer).descendants():
        if isinstance(obj, tf.Variable) and id(obj) not in known:
            known.add(id(obj))
            found.append(obj)
    return found


def metric_variables(model) -> list[tf.Variable]:
    """The state of the compiled loss tracker and metrics (built lazily, by
    `fit` or by tracing a step)."""
    seen: dict[int, tf.Variable] = {}
    for metric in model.metrics:
        for variable in metric.variables:
            seen.setdefault(id(variable), variable)
    return list(seen.values())


def is_compiled(model) -> bool:
    """True when the model is compiled with an optimizer."""
    return getattr(model, "optimizer", None) is not None and bool(
        getattr(model, "_is_compiled", False)
    )


def has_loss(model) -> bool:
    """True when training the model minimizes something (Keras 2 keeps an
    empty container for `compile(loss=None)`)."""
    return _keras_common.has_loss_of(model, _PREFIX)


def overrides(model, method: str) -> str | None:
    """The class that overrides Keras' `method`, or None for Keras' own."""
    return _keras_common.overrides_of(model, method, _PREFIX)


def build_optimizer(model) -> None:
    """Creates the optimizer's slots (under a strategy, in its scope).

    Keras 2's legacy optimizers (`tf_keras.optimizers.legacy`) have no
    `build`; their `_create_all_weights` creates the same state, in the
    order their first step would.
    """
    optimizer = model.optimizer
    with model.distribute_strategy.scope():
        if hasattr(optimizer, "build"):
            if not getattr(optimizer, "_built", False):
                optimizer.build(model.trainable_variables)
        else:
            optimizer._create_all_weights(model.trainable_variables)


def step(model, x, targets, training: bool, predicted=None):
    """One step of Keras 2's own `train_step` (or `test_step`), to be
    traced; arguments and result as `keras3.step`.

    `minimize` scales the loss itself under a `LossScaleOptimizer`.
    """
    with tf.GradientTape() as tape:
        y_pred = predicted(x) if predicted else model(x, training=training)
        y = targets(y_pred)
        loss = model.compute_loss(x, y, y_pred, None)
    if training:
        model.optimizer.minimize(loss, model.trainable_variables, tape=tape)
    return loss, y_pred, model.compute_metrics(x, y, y_pred, None)


def uses_ema(model) -> bool:
    """True when `fit` ends by moving the optimizer's EMA into the weights."""
    return _keras_common.uses_ema(model)


def to_json(model) -> str | None:
    """The model's config with its build and compile configs, as Keras 2's
    own `.keras` format serializes it, or None with a warning.

    As for Keras 3 the compile config holds the model's actual optimizer.
    """
    try:
        config = tf_keras.saving.serialize_keras_object(model)
    except NotImplementedError as e:
        _keras_common.warn_no_config(model, e)
        return None
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and config.get("compile_config"):
        config["compile_config"]["optimizer"] = tf_keras.optimizers.serialize(optimizer)
    config[VERSION_KEY] = tf_keras.__version__
    return _keras_common.dumps(config)


def wrote(config: dict) -> bool:
    """True for the JSON config of a model this adapter wrote."""
    return str(config.get(VERSION_KEY, "")).startswith("2.")


def from_config(config: dict, custom_objects, unsafe: bool):
    """Builds (and compiles, with a compile config) the model of `config`."""
    config = {k: v for k, v in config.items() if k != VERSION_KEY}
    return tf_keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=not unsafe
    )


def registered(name: str, custom_objects) -> bool:
    """True when `name` is in `custom_objects` or registered with
    `tf_keras.saving.register_keras_serializable`."""
    return tf_keras.saving.get_registered_object(name, custom_objects) is not None


def unsafe_deserialization_enabled() -> bool:
    """True after `tf_keras.config.enable_unsafe_deserialization()`."""
    from tf_keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is False


def layer_assets(model) -> dict[str, bytes]:
    """What `layer.save_assets` writes (an adapted lookup layer's
    vocabulary), as `keras3.layer_assets`: Keras 2 layers have the same
    protocol."""
    return _keras_common.assets_of(all_layers(model))


def restore_layer_state(model, assets: dict[str, str]) -> None:
    """Gives lookup layers their vocabulary back from `assets` (layer index
    -> local folder), then lets adapted preprocessing layers derive their
    working state from what they now hold (Normalization's mean from its
    adapt_mean, a lookup layer's checks from its vocabulary)."""
    for index, layer in enumerate(all_layers(model)):
        if hasattr(layer, "load_assets") and str(index) in assets:
            layer.load_assets(assets[str(index)])
        layer.finalize_state()


def variable_name(variable) -> str:
    return variable.name


def steps_only_on_a_copy(model) -> bool:
    """True when a step of `model` can be traced only on a single-device
    copy: Keras 2 updates its metrics (`SyncOnReadVariable`s under a
    distribution strategy) only in a replica context."""
    return _keras_common.any_distributed(model_variables(model))
