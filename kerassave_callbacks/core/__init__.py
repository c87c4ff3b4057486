"""The core: SavedModels with train / eval / serve graphs, and the loader."""

from kerassave_callbacks.core.export import SavedModelExistsError, export_saved_model

__all__ = ["SavedModelExistsError", "export_saved_model"]
