"""Versions the publish gate refused, kept as `rejected-<version>` with
their reasons: the name is no integer, so TF Serving never loads one, and
retention and cleanup never touch it.
"""

from __future__ import annotations

import posixpath

from kerassave_callbacks import _files, _fs, layout


def versions(export_dir: str) -> list[int]:
    """The versions kept as `rejected-<version>` in `export_dir`, oldest
    first."""
    found = (layout.rejected_version(n) for n in _files.entries(export_dir))
    return sorted(v for v in found if v is not None)


def reject(
    staged: _files.Staging, export_dir: str, version: int, reason: bytes, keep: int
):
    """Keeps a staged version that failed the publish gate as
    `rejected-<version>` (with `reason` in `layout.REJECTION`), then removes
    all but the newest `keep` rejected copies. With `keep=0` nothing is
    kept. Returns the kept copy's path, or None.

    The name is no integer, so TF Serving never loads it; retention and
    cleanup never touch it.
    """
    kept = None
    if keep > 0:
        _fs.write_bytes(posixpath.join(staged.path, layout.REJECTION), reason)
        kept = posixpath.join(export_dir, layout.rejected_name(version))
        if _fs.exists(kept):
            _files.remove_tree(kept)
        if _files.renames_atomically(kept):
            _fs.rename(staged.path, kept)
        else:
            _files.move_graph_last(staged.path, kept)
        staged.final = kept
    for old in versions(export_dir)[: -keep or None]:
        _files.remove_tree(posixpath.join(export_dir, layout.rejected_name(old)))
    return kept
