"""Versioned SavedModel exports of Keras models for TensorFlow Serving.

Public API: everything else in this package is private.
"""

from kerassave_callbacks.core import (
    SavedModelExistsError,
    export_saved_model,
    load_from_saved_model,
)

__all__ = [
    "SavedModelExistsError",
    "export_saved_model",
    "load_from_saved_model",
]
