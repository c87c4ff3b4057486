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
from kerassave_callbacks.export_dir import ExportDir
from kerassave_callbacks.exporter import (
    ExportError,
    ExportRecord,
    PendingExport,
    VersionedExporter,
)
from kerassave_callbacks.flags import define_export_flags, exporter_from_flags

__all__ = [
    "ExportDir",
    "ExportError",
    "ExportRecord",
    "PendingExport",
    "SavedModelExistsError",
    "SavedModelExporter",
    "VersionedExporter",
    "__version__",
    "define_export_flags",
    "export_saved_model",
    "exporter_from_flags",
    "load_from_saved_model",
]
