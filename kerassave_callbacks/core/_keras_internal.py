"""The one place that reads Keras internals.

Keras 3 has no public API that gives the input structure of a built model
(functional, Sequential or subclassed and already called); `model.export()`
uses `keras.src.export.export_utils.get_input_signature` for it, and so do
we, only when the caller gave no `input_signature`.
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
