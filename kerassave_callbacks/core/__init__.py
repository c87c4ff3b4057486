"""The core: SavedModels with train / eval / serve graphs, and the loader.

No callbacks here: the exporter and the callback build on this package.
"""

from kerassave_callbacks.core.export import SavedModelExistsError, export_saved_model
from kerassave_callbacks.core.loader import load_from_saved_model

__all__ = ["SavedModelExistsError", "export_saved_model", "load_from_saved_model"]
