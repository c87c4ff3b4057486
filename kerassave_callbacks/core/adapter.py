"""The one door to Keras: what the mode graphs, the loader, the exporter and
the callback may ask of a model's Keras.

Two modules implement it, `keras3` (Keras 3, `keras`) and `keras2` (Keras 2,
`tf_keras`); `keras_api.adapter_for(model)` returns the one of a model.
They share helpers from `_keras_common` and never import each other;
nothing outside them touches a private name of either Keras. A new Keras
is one more module with these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import tensorflow as tf


class BatchHooks:
    """A callback mixin that tells Keras 2's `fit` (`tf_keras`) which batch
    hooks the callback implements: `tf_keras` asks each callback through
    private methods of its own `Callback` class, which Keras 3 never calls.
    The callback says it with `_uses_train_batch_hooks()`.

    Example:

        class Exporter(BatchHooks, keras.callbacks.Callback):
            def _uses_train_batch_hooks(self) -> bool:
                return True
    """

    def _uses_train_batch_hooks(self) -> bool:
        return False

    def _implements_train_batch_hooks(self) -> bool:
        return self._uses_train_batch_hooks()

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False


class KerasAdapter(Protocol):
    """The functions an adapter module defines (a module satisfies this
    protocol structurally).

    Example:

        adapter = keras_api.adapter_for(model)
        adapter.model_variables(model)  # the tf.Variables of its weights
    """

    # What a model is.

    def version(self) -> str:
        """The version of this Keras."""

    def is_model(self, obj) -> bool:
        """True for a model of this Keras."""

    def is_layer(self, obj) -> bool:
        """True for a layer of this Keras (models included)."""

    def is_sequential(self, model) -> bool:
        """True for a Sequential model (it has no output_names)."""

    def inferred_input_signature(self, model) -> Any:
        """The input structure of a built model as `tf.TensorSpec`s; raises
        ValueError for a model never built or called."""

    def all_layers(self, model) -> list:
        """Every layer inside `model`, nested ones included, in a fixed
        order (layer assets are indexed by it)."""

    # Its state, as the tf.Variables that hold it.

    def model_variables(self, model) -> list[tf.Variable]:
        """The model's weights."""

    def optimizer_variables(self, model) -> list[tf.Variable]:
        """The optimizer's state: iteration count first, then its slots."""

    def metric_variables(self, model) -> list[tf.Variable]:
        """The state of the compiled loss tracker and metrics."""

    # Its step.

    def is_compiled(self, model) -> bool:
        """True when the model is compiled with an optimizer."""

    def has_loss(self, model) -> bool:
        """True when training the model minimizes something."""

    def overrides(self, model, method: str) -> str | None:
        """The user class that overrides Keras' `method` (`train_step`...),
        or None for Keras' own."""

    def build_optimizer(self, model) -> None:
        """Creates the optimizer's slots (under a strategy, in its scope)."""

    def step(
        self,
        model,
        x,
        targets: Callable[[Any], Any],
        training: bool,
        predicted: Callable[[Any], Any] | None = None,
    ) -> tuple[Any, Any, dict]:
        """One step of Keras' own train (or test) step, to be traced:
        (loss, predictions, {metric name: value}), the loss tracker left
        out; `targets` maps the predictions to the targets' structure;
        `predicted`, when given, maps `x` to predictions already traced
        (the serve function, called instead of the model)."""

    def uses_ema(self, model) -> bool:
        """True when `fit` ends by moving the optimizer's EMA into the
        weights."""

    def steps_only_on_a_copy(self, model) -> bool:
        """True when the train and eval steps must be traced on a
        single-device copy (`core.single_device`)."""

    # Its config and files.

    def to_json(self, model) -> str | None:
        """The model's config with its build and compile configs, or None
        (with a warning) for a model that has none."""

    def wrote(self, config: dict) -> bool:
        """True for the JSON config of a model this adapter wrote."""

    def from_config(self, config: dict, custom_objects, unsafe: bool) -> Any:
        """Builds (and compiles, with a compile config) the model of
        `config`."""

    def registered(self, name: str, custom_objects) -> bool:
        """True when `name` is in `custom_objects` or registered with this
        Keras (`register_keras_serializable`): code the caller imported."""

    def unsafe_deserialization_enabled(self) -> bool:
        """True after this Keras' `enable_unsafe_deserialization()`."""

    def layer_assets(self, model) -> dict[str, bytes]:
        """What the layers keep outside variables (`save_assets`), as
        `<layer index>/<file>` -> bytes."""

    def restore_layer_state(self, model, assets: dict[str, str]) -> None:
        """Gives layers their state back once their variables are restored:
        `assets` maps a layer index to a local folder of its files."""

    def variable_name(self, variable) -> str:
        """A variable's name for messages (its Keras path)."""
