"""Versioned SavedModel exports of Keras models for TensorFlow Serving.

Public API: everything else in this package is private.
"""

from kerassave_callbacks._version import __version__
from kerassave_callbacks.callbacks import SavedModelExporter
from kerassave_callbacks.core import (
    SavedModelExistsError,
    export_saved_model,
    load_from_saved_model,
)
from kerassave_callbacks.exporter import ExportError, ExportRecord, VersionedExporter

__all__ = [
    "ExportError",
    "ExportRecord",
    "SavedModelExistsError",
    "SavedModelExporter",
    "VersionedExporter",
    "__version__",
    "export_saved_model",
    "load_from_saved_model",
]
