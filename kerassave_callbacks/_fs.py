"""The file system: local paths through `os`, every other path through
`tf.io.gfile`.

Reading a local export directory (`kerassave list`, the dashboard's status)
must not import TensorFlow, which takes seconds; `gs://`, `s3://`, `hdfs://`
and TF's `ram://` still go through `tf.io.gfile`, imported at the first
remote path. Both sides raise builtin errors (`FileNotFoundError`,
`FileExistsError`, `PermissionError`, else `OSError`), so callers handle one
kind.

What each file system guarantees (`facts`) is written here once, and the
commit path reads it: a new file system is one entry in `_FACTS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a file system guarantees, as the commit path relies on it.

    Attributes:
      atomic_rename: a directory is renamed in one step, so a version
        appears whole; else a rename copies file by file, and a version is
        committed by a copy that writes its graph file last.
      links: symbolic links exist (the user's pinned versions).
      fsync: files and directories can be flushed to the disk before the
        rename that publishes them.
      one_listing: a glob is answered by one listing of everything under
        its fixed prefix, and directories are only prefixes of object
        names (GCS): a tree is listed a depth per request instead of a
        request per directory and per entry (a walk), and a file is
        written without making its directory first.
    """

    atomic_rename: bool
    links: bool = False
    fsync: bool = False
    one_listing: bool = False


_LOCAL = Facts(atomic_rename=True, links=True, fsync=True)
# Scheme -> facts; any other scheme (gs://, s3://, TF's ram://) is an object
# store: per-object renames, no links, nothing to flush.
_FACTS = {
    "": _LOCAL,
    "file": _LOCAL,
    "hdfs": Facts(atomic_rename=True),
    "gs": Facts(atomic_rename=False, one_listing=True),
}
_OBJECT_STORE = Facts(atomic_rename=False)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def _builtin_errors(path: str):
    """TF's file errors as the builtin ones `os` raises."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(errno.ENOENT, e.message, path) from e
    except tf.errors.AlreadyExistsError as e:
        raise FileExistsError(errno.EEXIST, e.message, path) from e
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(errno.EACCES, e.message, path) from e
    except tf.errors.OpError as e:
        raise OSError(errno.EIO, e.message, path) from e


def scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else ""


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def facts(path: str) -> Facts:
    """What the file system of `path` guarantees."""
    return _FACTS.get(scheme(path), _OBJECT_STORE)


def renames_atomically(path: str) -> bool:
    return facts(path).atomic_rename


def is_link(path: str) -> bool:
    """True for a symbolic link (only local file systems have them).

    A link in `export_dir` is the user's: a version linked in is served and
    numbered like any other, but nothing here deletes it or through it.
    """
    return facts(path).links and os.path.islink(local(path))


def fsync_tree(path: str) -> None:
    """Flushes every file and directory under `path` to the disk, where
    the file system can (`Facts.fsync`)."""
    if not facts(path).fsync:
        return
    for dirpath, _, filenames in os.walk(local(path)):
        for name in filenames:
            fsync(os.path.join(dirpath, name))
        fsync(dirpath)


def fsync(path: str) -> None:
    """Flushes one local file or directory to the disk."""
    fd = os.open(local(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local(path: str) -> str:
    """A local path without its `file://` prefix."""
    return path[len("file://") :] if path.startswith("file://") else path


def exists(path: str) -> bool:
    return os.path.exists(local(path)) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(local(path)) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> list[str]:
    """The names in a directory (no trailing slashes).

    Raises:
      FileNotFoundError: it does not exist.
    """
    if is_local(path):
        return os.listdir(local(path))
    with _builtin_errors(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]


def read_bytes(path: str) -> bytes:
    """The contents of a file.

    Raises:
      FileNotFoundError: it does not exist.
    """
    if is_local(path):
        with open(local(path), "rb") as f:
            return f.read()
    with _builtin_errors(path), _gfile().GFile(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    if is_local(path):
        with open(local(path), "wb") as f:
            f.write(data)
        return
    with _builtin_errors(path), _gfile().GFile(path, "wb") as f:
        f.write(data)


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(local(path), exist_ok=True)
        return
    with _builtin_errors(path):
        _gfile().makedirs(path)


def size(path: str) -> int:
    """The bytes of a file."""
    if is_local(path):
        return os.stat(local(path)).st_size
    with _builtin_errors(path):
        return _gfile().stat(path).length


def files(root: str) -> list[str]:
    """The paths of the files under `root`, relative to it."""
    if facts(root).one_listing:
        return _files_by_depth(root)
    found = []
    for dirpath, _, filenames in walk(root):
        rel = dirpath[len(root) :].strip("/")
        for name in filenames:
            path = f"{rel}/{name}" if rel else name
            # ram:// lists "assets/.extra" for "assets.extra/...": skip names
            # that are not there.
            if is_local(root) or exists(f"{root}/{path}"):
                found.append(path)
    return found


def _files_by_depth(root: str) -> list[str]:
    """`files` on a store that lists a whole prefix at once: a glob per
    depth; an entry is a file unless it is a directory: the prefix of
    another entry, or one with a marker object (`<name>/`)."""
    root = root.rstrip("/")
    entries, pattern = set(), ""
    while True:
        pattern += "/*"
        with _builtin_errors(root):
            level = _gfile().glob(root + pattern)
        if not level:
            break
        entries.update(e[len(root) + 1 :] for e in level)
    folders = {e.rstrip("/").rpartition("/")[0] for e in entries}
    folders |= {e.rstrip("/") for e in entries if e.endswith("/")}
    return sorted(e for e in entries if not e.endswith("/") and e not in folders)


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(directory, subdirectories, files) under `root`, as `os.walk`."""
    if is_local(root):
        prefix = root[: len(root) - len(local(root))]
        for dirpath, dirs, files in os.walk(local(root)):
            yield prefix + dirpath, dirs, files
        return
    yield from _gfile().walk(root)


def remove_file(path: str) -> None:
    if is_local(path):
        os.remove(local(path))
        return
    with _builtin_errors(path):
        _gfile().remove(path)


def remove_empty_dir(path: str) -> None:
    """Removes a directory only if it is empty.

    Raises:
      FileExistsError: it holds something.
    """
    if is_local(path):
        try:
            os.rmdir(local(path))
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "not empty", path) from e
            raise
        return
    if listdir(path):
        raise FileExistsError(errno.EEXIST, "not empty", path)
    remove_file(path)


def rmtree(path: str) -> None:
    """Removes a directory tree; local links inside are unlinked, never
    followed (gfile's rmtree would descend into a linked directory)."""
    if is_local(path):
        shutil.rmtree(local(path))
        return
    with _builtin_errors(path):
        _gfile().rmtree(path)


def rename(src: str, dst: str) -> None:
    """Renames `src` to `dst`, never over something that exists.

    Raises:
      FileExistsError: `dst` exists (rename(2) would replace an empty
        directory; this refuses it).
    """
    if is_local(src):
        if os.path.lexists(local(dst)):
            raise FileExistsError(errno.EEXIST, "exists", dst)
        try:
            os.rename(local(src), local(dst))
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "exists", dst) from e
            raise
        return
    import tensorflow as tf

    try:
        with _builtin_errors(dst):
            _gfile().rename(src, dst, overwrite=False)
    except OSError as e:
        # rename(2) on a local-like remote (hdfs): ENOTEMPTY.
        if isinstance(e.__cause__, tf.errors.FailedPreconditionError):
            raise FileExistsError(errno.EEXIST, "exists", dst) from e
        raise


def replace(src: str, dst: str) -> None:
    """Renames the file `src` over `dst` (atomic on local disks; one object
    on object stores)."""
    if is_local(src):
        os.replace(local(src), local(dst))
        return
    with _builtin_errors(dst):
        _gfile().rename(src, dst, overwrite=True)


def copy(src: str, dst: str) -> None:
    """Copies one file, never over an existing one."""
    if is_local(src) and is_local(dst):
        if os.path.exists(local(dst)):
            raise FileExistsError(errno.EEXIST, "exists", dst)
        shutil.copyfile(local(src), local(dst))
        return
    with _builtin_errors(dst):
        _gfile().copy(src, dst, overwrite=False)
