"""The one place that reads Keras internals.

Keras 3 has no public API for three things we need:
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

import keras
import tensorflow as tf
from keras.src.export import export_utils


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


def unsafe_deserialization_enabled() -> bool:
    """True after `keras.config.enable_unsafe_deserialization()`.

    Keras has a setter but no public getter for it.
    """
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is False
