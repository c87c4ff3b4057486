"""`fingerprint.pb`: TensorFlow's fingerprint of the files an export holds.

`tf.saved_model.save` fingerprints the graph it wrote, but every export here
rewrites that graph (the per-mode split) and writes each version's
variables itself, so the fingerprint is computed again over the files
actually written, with TF's own function. It has no public API, so this is
the one module that imports `tensorflow.python`:
`pywrap_saved_model.fingerprinting.CreateFingerprintDef` (what
`tf.saved_model.save` calls). Readers use the public
`tf.saved_model.experimental.read_fingerprint`.
"""

from __future__ import annotations

import posixpath

from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

from kerassave_callbacks import _fs, layout


def write(saved_model_path: str) -> None:
    """Writes the fingerprint of the SavedModel at `saved_model_path` (its
    `saved_model.pb` and variables). An `as_text` export gets none: TF
    fingerprints only `saved_model.pb` (of a `.pbtxt` it computes zeros)."""
    if not _fs.exists(posixpath.join(saved_model_path, layout.SAVED_MODEL_PB)):
        return
    serialized = fingerprinting.CreateFingerprintDef(saved_model_path)
    _fs.write_bytes(posixpath.join(saved_model_path, layout.FINGERPRINT), serialized)
