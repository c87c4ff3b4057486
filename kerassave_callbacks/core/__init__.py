"""The core: SavedModels with train / eval / serve graphs, and the loader.

No callbacks here: the exporter and the callback build on this package.
The names are loaded at first use (PEP 562), so that leaves such as
`core.modes` and `core.names` are read without importing TensorFlow.
"""

from __future__ import annotations

import importlib

# Name -> the module of this package that defines it.
_HOMES = {
    "SavedModelExistsError": "export",
    "export_saved_model": "export",
    "load_from_saved_model": "loader",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(
            f"module 'kerassave_callbacks.core' has no attribute {name!r}"
        )
    module = importlib.import_module(f"{__name__}.{_HOMES[name]}")
    value = globals()[name] = getattr(module, name)
    return value
