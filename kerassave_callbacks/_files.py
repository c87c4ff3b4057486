"""Operations on export directories: listing versions, staging and
committing a version, retiring and removing one (what crashed exports left
is `_leftovers`).

The names come from `layout`; the file system is `_fs` (local paths through
`os`, others through `tf.io.gfile`), so nothing here imports TensorFlow for
a local directory.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import posixpath
import time

from absl import logging

from kerassave_callbacks import _fs, layout
from kerassave_callbacks._fs import fsync_tree, is_link, is_local, renames_atomically


def parent(path: str) -> str | None:
    """The directory that holds `path`, or None at a file system root (`/`,
    or a bucket such as `gs://bucket`)."""
    prefix, sep, rest = path.rpartition("://")
    rest = rest.rstrip("/")
    head = posixpath.dirname(rest)
    if sep:
        return f"{prefix}{sep}{head}" if head else None
    return head or ("." if rest and not path.startswith("/") else None)


def linked_versions(export_dir: str) -> set[int]:
    """The versions of `export_dir` that a symbolic link in it points to.

    Such a version is pinned like the link itself: deleting it would leave
    the link dangling.
    """
    if not _fs.facts(export_dir).links:
        return set()
    root = os.path.realpath(_fs.local(export_dir))
    linked = set()
    for name in entries(export_dir):
        path = posixpath.join(export_dir, name)
        if not is_link(path):
            continue
        target = os.path.realpath(_fs.local(path))
        version = layout.version_name(os.path.basename(target))
        if version is not None and os.path.dirname(target) == root:
            linked.add(version)
    return linked


# Listing.


def entries(export_dir: str) -> list[str]:
    """The names in `export_dir` (none when it does not exist, or stops
    existing while it is listed)."""
    if not _fs.isdir(export_dir):
        return []
    try:
        return [name.rstrip("/") for name in _fs.listdir(export_dir)]
    except FileNotFoundError:
        return []


def complete_versions(
    export_dir: str, where: layout.DirectoryLayout = layout.TF_SERVING
) -> list[int]:
    """The integer versions under `export_dir` that hold a graph (where
    `where` puts it), oldest first."""
    found = []
    for name in entries(export_dir):
        version = layout.version_name(name)
        root = where.root(posixpath.join(export_dir, name))
        if version is not None and has_graph(root):
            found.append(version)
    return sorted(found)


def has_graph(path: str) -> bool:
    return any(_fs.exists(posixpath.join(path, f)) for f in layout.GRAPH_FILES)


def missing_files(path: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What a SavedModel directory lacks to be loaded: its graph file, the
    variables index and data, and the `extra` files; [] when complete."""
    missing = [] if has_graph(path) else [" or ".join(layout.GRAPH_FILES)]
    names = entries(posixpath.join(path, layout.VARIABLES_DIR))
    stem = posixpath.basename(layout.VARIABLES_PREFIX)
    if f"{stem}.index" not in names:
        missing.append(f"{layout.VARIABLES_PREFIX}.index")
    if not any(n.startswith(f"{stem}.data-") for n in names):
        missing.append(f"{layout.VARIABLES_PREFIX}.data-*")
    missing += [f for f in extra if not _fs.exists(posixpath.join(path, f))]
    return missing


def write_tree(root: str, files: dict[str, bytes]) -> None:
    """Writes `relative path -> bytes` under `root`."""
    for rel, data in files.items():
        target = posixpath.join(root, rel)
        _fs.makedirs(posixpath.dirname(target))
        _fs.write_bytes(target, data)


def write_json(path: str, value) -> None:
    """Writes a JSON file of the export (`layout.json_bytes`), making its
    directory."""
    _fs.makedirs(posixpath.dirname(path))
    _fs.write_bytes(path, layout.json_bytes(value))


def replace_file(path: str, data: bytes, now: float) -> None:
    """Replaces a file whole: written aside, then renamed over it, so no
    reader ever sees it half-written."""
    staged = layout.side_temp_name(path, now)
    _fs.write_bytes(staged, data)
    _fs.replace(staged, path)


def dir_size(path: str) -> int:
    """The bytes of the files under `path`."""
    return sum(_fs.size(posixpath.join(path, f)) for f in _fs.files(path))


# Checking paths before anything is written.


def check_export_dir(export_dir) -> str:
    """Returns `export_dir` as a str; refuses a file or an unwritable place.

    Raises:
      TypeError: not a path.
      ValueError: empty, a file system root, or a file.
      PermissionError: it cannot be created or written.
    """
    if not isinstance(export_dir, (str, os.PathLike)):
        raise TypeError(
            f"`export_dir` must be a path. Received: export_dir={export_dir!r}."
        )
    export_dir = os.fspath(export_dir)
    if not export_dir.strip():
        raise ValueError(
            f"export_dir={export_dir!r} is empty. Pass the directory the "
            "versions go to, e.g. export_dir='exports'."
        )
    _, _, rest = export_dir.rpartition("://")
    local_root = is_local(export_dir) and os.path.abspath(rest) == "/"
    if not rest.strip("/") or local_root:
        raise ValueError(
            f"export_dir={export_dir!r} is the root of a file system; retention "
            "there would delete integer-named directories that are not "
            "versions. Pass a directory of its own, e.g. '/models/my_model'."
        )
    export_dir = export_dir.rstrip("/")
    if _fs.exists(export_dir) and not _fs.isdir(export_dir):
        raise ValueError(
            f"export_dir={export_dir!r} is an existing file. Pass a directory "
            "(it is created if missing)."
        )
    check_can_create(export_dir, "export_dir")
    return export_dir


def check_can_create(path: str, argument: str) -> None:
    """Refuses a local `path` that cannot be created or written, before
    anything is written (other file systems answer only when written to).

    Raises:
      ValueError: an ancestor of `path` is a file.
      PermissionError: the nearest existing ancestor is not writable.
    """
    if not is_local(path):
        return
    ancestor = os.path.abspath(_fs.local(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(
            f"{argument}={path!r} cannot be created: {ancestor!r} is a file. "
            "Pass a directory path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{argument}={path!r} is not writable: no write permission on "
            f"{ancestor!r}. Pass a directory you can write to."
        )


# Committing.


class IncompleteExportError(ValueError):
    """A staged SavedModel lacks files (someone removed them): not committed."""


def _check_complete(path: str, extra: tuple[str, ...]) -> None:
    missing = missing_files(path, extra)
    if missing:
        raise IncompleteExportError(
            f"{path} lacks {', '.join(missing)}: something removed files of "
            "this export while it was written (a cleanup from another "
            "container or host?), so it is not published."
        )


def commit(
    temp: str,
    final: str,
    extra: tuple[str, ...] = (),
    where: layout.DirectoryLayout = layout.TF_SERVING,
) -> None:
    """Moves a complete SavedModel from `temp` to `final`.

    The staged tree is checked first (`missing_files`, with `extra`); where
    renames are atomic, `final` is checked again after the rename and taken
    out of sight if something removed files in between. Elsewhere the files
    are moved one by one with the graph file last, so TF Serving sees
    nothing until the move is complete.

    Raises:
      FileExistsError: `final` exists already (another writer took it).
      IncompleteExportError: the staged tree lacks files; nothing was
        published.

    `where` says where in the tree the SavedModel is.
    """
    _check_complete(where.root(temp), extra)
    if renames_atomically(final):
        _fs.rename(temp, final)
        if _fs.facts(final).fsync:
            _fs.fsync(posixpath.dirname(_fs.local(final)) or ".")
        try:
            _check_complete(where.root(final), extra)
        except IncompleteExportError:
            retired = retire_version(final, time.time())
            if retired is not None:
                remove_tree(retired)
            raise
        return
    if _fs.exists(final):
        raise FileExistsError(errno.EEXIST, "version exists", final)
    move_graph_last(temp, final)


def move_graph_last(src: str, dst: str) -> None:
    """Moves a SavedModel tree file by file, its graph file last, then
    removes what is left of `src` (folder markers). On an object store each
    move is one object copied where it is stored (GCS: rewritten
    server-side, never downloaded), then deleted.

    Raises:
      FileExistsError: a file is at `dst` already (another writer took
        it); what was moved is moved back, so `src` is whole again.
    """
    files = _fs.files(src)
    # The graph file last: TF Serving loads nothing without it.
    files.sort(key=lambda f: posixpath.basename(f) in layout.GRAPH_FILES)
    if not _fs.facts(dst).one_listing:  # Else folders are name prefixes.
        for folder in sorted({posixpath.dirname(f"{dst}/{f}") for f in files}):
            _fs.makedirs(folder)
    moved = []
    try:
        for rel in files:
            _fs.rename(posixpath.join(src, rel), posixpath.join(dst, rel))
            moved.append(rel)
    except FileExistsError:
        for rel in moved:
            _fs.rename(posixpath.join(dst, rel), posixpath.join(src, rel))
        raise
    remove_tree(src)


class Staging:
    """A SavedModel written under a temporary sibling of where it goes, and
    published by `finalize()` only when complete. Whatever was not
    finalized is removed when the `with` block ends: a failed write leaves
    nothing behind (a crash leaves a temporary, which `leftovers` finds).

    The one way anything here publishes a SavedModel: `export_saved_model`
    and `VersionedExporter` both write through it.

    Example:

        with Staging("/models/digits", time.time()) as staged:
            write_a_saved_model(staged.path)
            staged.finalize("/models/digits/1764070001")

    Args:
      parent: the directory the SavedModel goes to.
      now: the unix time, recorded in the temporary's name.
    """

    def __init__(self, parent: str, now: float):
        self.path = posixpath.join(parent, layout.temp_name(now))
        self.final: str | None = None
        self._flush: concurrent.futures.Future | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc_info) -> None:
        self._flushed()
        if self.final is None and _fs.exists(self.path):
            remove_tree(self.path)

    def start_flush(self) -> None:
        """Starts flushing the staged tree to a local disk in a thread of
        its own, so that checks reading it (the publish gate) overlap the
        wait for the disk; `finalize` waits for it."""
        if _fs.facts(self.path).fsync and self._flush is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, "kerassave-fsync")
            self._flush = pool.submit(fsync_tree, self.path)
            pool.shutdown(wait=False)

    def _flushed(self) -> None:
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.result()

    def finalize(
        self,
        final: str,
        extra: tuple[str, ...] = (),
        where: layout.DirectoryLayout = layout.TF_SERVING,
    ) -> None:
        """Flushes the staged tree (local disks) and commits it to `final`
        (`where`: where in it the SavedModel is).

        Raises:
          FileExistsError: `final` exists (it may be finalized elsewhere).
          IncompleteExportError: the staged tree lacks files.
        """
        self._flushed()
        # After a started flush, only what was written since is dirty.
        fsync_tree(self.path)
        commit(self.path, final, extra, where)
        self.final = final


# Removing.


def remove_empty_dir(path: str) -> None:
    """Removes a directory only if it is empty; never anything inside it.

    Raises:
      FileExistsError: `path` holds something (or is a link).
    """
    if is_link(path):
        raise FileExistsError(errno.EEXIST, "a symbolic link", path)
    try:
        _fs.remove_empty_dir(path)
    except FileNotFoundError:
        return


def remove_tree(path: str) -> None:
    """Removes a directory; one that is already gone is logged, not raised.

    Never follows a symbolic link: a link given here is left alone, and a
    link inside the tree is removed as a link, its target untouched.
    """
    if is_link(path):
        logging.warning("Not removing %s: it is a symbolic link.", path)
        return
    try:
        _fs.rmtree(path)
    except FileNotFoundError:
        logging.info("%s was already removed", path)
    except OSError as e:
        logging.warning("Could not remove %s (cleanup retries later): %s", path, e)


def retire_version(path: str, now: float) -> str | None:
    """Takes a version out of sight at once; returns what is left to delete.

    Where renames are atomic the version leaves its integer name for a
    temporary one (a crash then leaves an abandoned temporary, which cleanup
    removes); elsewhere its graph file goes first, so TF Serving stops
    seeing it. Either way no half-deleted version is ever visible. Returns
    the directory to remove with `remove_tree`, or None if it was gone.

    Raises:
      ValueError: `path` is a symbolic link (the caller must not retire it).
      OSError: it could not be retired.
    """
    if is_link(path):
        raise ValueError(f"{path} is a symbolic link; links are never retired.")
    if renames_atomically(path):
        doomed = posixpath.join(posixpath.dirname(path), layout.temp_name(now))
        try:
            _fs.rename(path, doomed)
        except FileNotFoundError:
            logging.info("%s was already removed", path)
            return None
        return doomed
    # Wherever the layout put the graph file.
    for rel in _fs.files(path):
        if posixpath.basename(rel) in layout.GRAPH_FILES:
            try:
                _fs.remove_file(posixpath.join(path, rel))
            except FileNotFoundError:
                pass  # Another cleaner got there first.
    return path
