"""What crashed exports left in an export directory, and its removal: the
rule the exporter runs at start-up and `kerassave cleanup` runs.

Temporaries beside the versions (a staged or a retired version) and files
written aside inside a version (`<file>.temp-...`) go once their writer is
gone (`layout.temp_is_abandoned`); on object stores, an integer directory
without a graph file an hour after its version time. Never a symbolic
link, nor anything else.
"""

from __future__ import annotations

import posixpath

from absl import logging

from kerassave_callbacks import _files, _fs, layout


def leftovers(
    export_dir: str, now: float, where: layout.DirectoryLayout = layout.TF_SERVING
) -> list[str]:
    """The paths in `export_dir` that crashed exports left behind.

    A temporary once its writer is gone (`layout.temp_is_abandoned`): a
    staged or retired version beside the versions, or a file written aside
    inside a version (`<file>.temp-...` in its `assets.extra/`, by
    `replace_file`); on object stores, an integer directory without a graph
    file (a move cut short) an hour after its version time. Never a
    symbolic link, nor anything else.
    """
    found = []
    copies = not _files.renames_atomically(export_dir)
    for name in _files.entries(export_dir):
        path = posixpath.join(export_dir, name)
        version = layout.version_name(name)
        if _files.is_link(path):
            continue  # The user's: never removed, nor what it points to.
        if layout.temp_is_abandoned(name, now) or (
            copies
            and version is not None
            and now - version > layout.STALE_SECONDS
            and not _files.has_graph(where.root(path))
        ):
            found.append(path)
        elif version is not None:
            found += _side_leftovers(where.info_path(path), now)
    return found


def remove_leftovers(
    export_dir: str, now: float, where: layout.DirectoryLayout = layout.TF_SERVING
) -> list[str]:
    """Removes what `leftovers` finds; returns the removed paths."""
    removed = leftovers(export_dir, now, where)
    for path in removed:
        logging.info("Removing the leftover of a crashed export: %s", path)
        if _fs.isdir(path):
            _files.remove_tree(path)
        else:
            try:
                _fs.remove_file(path)
            except FileNotFoundError:
                pass
    return removed


def _side_leftovers(info_path: str, now: float) -> list[str]:
    """The abandoned side temporaries beside a version's info (in its
    `assets.extra/`)."""
    folder = posixpath.dirname(info_path)
    return [
        posixpath.join(folder, n)
        for n in _files.entries(folder)
        if layout.SIDE_TEMP in n and layout.temp_is_abandoned(n, now)
    ]
