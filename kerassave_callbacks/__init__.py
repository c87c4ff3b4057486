"""Versioned SavedModel exports of Keras models for TensorFlow Serving.

Public API: everything else in this package is private. The names are
loaded at first use (PEP 562), so that `kerassave --help`, and `kerassave
list` of a local directory, start without importing TensorFlow or Keras.

Example:

    from kerassave_callbacks import SavedModelExporter

    model.fit(x, y, epochs=5, callbacks=[SavedModelExporter("/tmp/exports")])
"""

from __future__ import annotations

import importlib

from kerassave_callbacks._version import __version__ as __version__

# Public name -> the module that defines it.
_HOMES = {
    "DirectoryLayout": "kerassave_callbacks.layout",
    "ExportDir": "kerassave_callbacks.export_dir",
    "ExportError": "kerassave_callbacks.records",
    "ExportOptions": "kerassave_callbacks.options",
    "ExportSchedule": "kerassave_callbacks.schedule",
    "Monitor": "kerassave_callbacks.options",
    "ExportRecord": "kerassave_callbacks.records",
    "ExportRejectedError": "kerassave_callbacks.records",
    "GateFailure": "kerassave_callbacks.core.validation",
    "PublishGate": "kerassave_callbacks.publish_gate",
    "PendingExport": "kerassave_callbacks.records",
    "RetentionPolicy": "kerassave_callbacks.options",
    "SavedModelExistsError": "kerassave_callbacks.core",
    "SavedModelExporter": "kerassave_callbacks.callbacks",
    "VersionedExporter": "kerassave_callbacks.exporter",
    "define_export_flags": "kerassave_callbacks.flags",
    "export_saved_model": "kerassave_callbacks.core",
    "exporter_from_flags": "kerassave_callbacks.flags",
    "load_from_saved_model": "kerassave_callbacks.core",
}

# Public modules: `kerassave_callbacks.signatures.classify()` and
# `from kerassave_callbacks import signatures` both work.
_MODULES = ("signatures",)

__all__ = sorted([*_HOMES, *_MODULES, "__version__"])


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(f"kerassave_callbacks.{name}")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'kerassave_callbacks' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES, *_MODULES])
