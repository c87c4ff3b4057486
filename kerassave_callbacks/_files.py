"""File operations of the exporter, all through `tf.io.gfile`.

Version directories are integer-named; a version is written under a
temporary sibling whose name TF Serving ignores and committed when complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import shutil
import socket
import time
import uuid

import tensorflow as tf
from absl import logging

# The layout of an export, named once. TF Serving reads saved_model.pb (or
# .pbtxt) and variables/, and from assets.extra/ only the warm-up requests.
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
GRAPH_FILES = (SAVED_MODEL_PB, SAVED_MODEL_PBTXT)
VARIABLES_PREFIX = "variables/variables"  # .index and .data-* beside it
MODEL_JSON = "assets/saved_model.json"
EXPORT_INFO = "assets.extra/export_info.json"
WARMUP_REQUESTS = "assets.extra/tf_serving_warmup_requests"
TEMP_PREFIX = "temp-"
# temp-<unix seconds>-<host>-<pid namespace>-<pid>-<random>: never all
# digits. The namespace says whose PIDs <pid> is one of (see `_namespace`).
_TEMP_RE = re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}$")
# Written by earlier releases, with no namespace: judged by age alone.
_OLD_TEMP_RE = re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)-(\d+)-[0-9a-f]{8}$")
# Schemes whose directory rename is atomic. Elsewhere (gs://, s3://, ram://)
# a rename copies file by file, so a version is committed by a copy that
# writes saved_model.pb last.
_RENAME_SCHEMES = ("", "file", "hdfs")
# A temporary whose writer's liveness cannot be checked (another host, or
# another PID namespace: a container beside this one), or an incomplete
# version on a copy-commit file system, is taken as abandoned once it is
# this old: far longer than any export takes.
STALE_SECONDS = 3600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _namespace() -> str:
    """Whose PIDs this process's PID is one of: a digest of the kernel's
    boot id and this process's PID namespace. Containers of one pod share
    the host name but not their PID namespaces; two machines never share a
    boot id."""
    parts = []
    for path, read in (
        ("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()),
        ("/proc/self/ns/pid", os.readlink),
    ):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def temp_name(now: float) -> str:
    """A fresh temporary name, carrying who writes it and since when."""
    return (
        f"{TEMP_PREFIX}{int(now)}-{_host()}-{_namespace()}-{os.getpid()}-"
        f"{uuid.uuid4().hex[:8]}"
    )


def parse_temp_name(name: str) -> tuple[int, str, str | None, int] | None:
    """(created, host, PID namespace, pid) of a temporary name, or None for
    other names. The namespace is None in names earlier releases wrote."""
    match = _TEMP_RE.match(name)
    if match:
        created, host, namespace, pid = match.groups()
        return int(created), host, namespace, int(pid)
    match = _OLD_TEMP_RE.match(name)
    if match:
        created, host, pid = match.groups()
        return int(created), host, None, int(pid)
    return None


def version_name(name: str) -> int | None:
    """The version of an integer-named entry (`"123"` or `"123/"`), else None.

    Only canonical decimals count: "0123" is no version (its path would not
    be `str(123)`), so nothing here ever touches it.
    """
    name = name.rstrip("/")
    if name.isascii() and name.isdigit() and name == str(int(name)):
        return int(name)
    return None


def scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else ""


def parent(path: str) -> str | None:
    """The directory that holds `path`, or None at a file system root (`/`,
    or a bucket such as `gs://bucket`)."""
    prefix, sep, rest = path.rpartition("://")
    rest = rest.rstrip("/")
    head = posixpath.dirname(rest)
    if sep:
        return f"{prefix}{sep}{head}" if head else None
    return head or ("." if rest and not path.startswith("/") else None)


def renames_atomically(path: str) -> bool:
    return scheme(path) in _RENAME_SCHEMES


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def is_link(path: str) -> bool:
    """True for a symbolic link (only local file systems have them).

    A link in `export_dir` is the user's: a version linked in is served and
    numbered like any other, but nothing here deletes it or through it.
    """
    return is_local(path) and os.path.islink(_local(path))


def linked_versions(export_dir: str) -> set[int]:
    """The versions of `export_dir` that a symbolic link in it points to.

    Such a version is pinned like the link itself: deleting it would leave
    the link dangling.
    """
    if not is_local(export_dir):
        return set()
    root = os.path.realpath(_local(export_dir))
    linked = set()
    for name in entries(export_dir):
        path = posixpath.join(export_dir, name)
        if not is_link(path):
            continue
        target = os.path.realpath(_local(path))
        version = version_name(os.path.basename(target))
        if version is not None and os.path.dirname(target) == root:
            linked.add(version)
    return linked


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_is_abandoned(name: str, now: float) -> bool:
    """True for a temporary whose writer is gone.

    Its PID is checked only when the writer ran on this host in this PID
    namespace (the same kernel boot, too), where that PID means the same
    process; any other temporary (another host, a container beside this one,
    a name without a namespace) is abandoned only once it is
    `STALE_SECONDS` old, far longer than any export takes.
    """
    parsed = parse_temp_name(name)
    if parsed is None:
        return False
    created, host, namespace, pid = parsed
    if host == _host() and namespace == _namespace():
        return not _pid_alive(pid)
    return now - created > STALE_SECONDS


def leftovers(export_dir: str, now: float) -> list[str]:
    """The paths in `export_dir` that crashed exports left behind.

    A temporary once its writer is gone (same host: its process has ended;
    other hosts: an hour after it started); on object stores, an integer
    directory without a graph file (a copy cut short) an hour after its
    version time. Never a symbolic link, nor anything else.
    """
    found = []
    copies = not renames_atomically(export_dir)
    for name in entries(export_dir):
        path = posixpath.join(export_dir, name)
        version = version_name(name)
        if is_link(path):
            continue  # The user's: never removed, nor what it points to.
        if temp_is_abandoned(name, now) or (
            copies
            and version is not None
            and now - version > STALE_SECONDS
            and not has_graph(path)
        ):
            found.append(path)
    return found


def entries(export_dir: str) -> list[str]:
    """The names in `export_dir` (none when it does not exist)."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(export_dir)]


def complete_versions(export_dir: str) -> list[int]:
    """The integer versions under `export_dir` that hold a graph, oldest first."""
    found = []
    for name in entries(export_dir):
        version = version_name(name)
        if version is not None and has_graph(posixpath.join(export_dir, name)):
            found.append(version)
    return sorted(found)


def has_graph(path: str) -> bool:
    return any(tf.io.gfile.exists(posixpath.join(path, f)) for f in GRAPH_FILES)


def missing_files(path: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What a SavedModel directory lacks to be loaded: its graph file, the
    variables index and data, and the `extra` files; [] when complete."""
    missing = [] if has_graph(path) else [" or ".join(GRAPH_FILES)]
    variables = posixpath.dirname(posixpath.join(path, VARIABLES_PREFIX))
    names = entries(variables)
    stem = posixpath.basename(VARIABLES_PREFIX)
    if f"{stem}.index" not in names:
        missing.append(f"{VARIABLES_PREFIX}.index")
    if not any(n.startswith(f"{stem}.data-") for n in names):
        missing.append(f"{VARIABLES_PREFIX}.data-*")
    missing += [f for f in extra if not tf.io.gfile.exists(posixpath.join(path, f))]
    return missing


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


def remove_tree(path: str) -> None:
    """Removes a directory; one that is already gone is logged, not raised.

    Never follows a symbolic link: a link given here is left alone, and a
    link inside the tree is removed as a link, its target untouched.
    """
    if is_link(path):
        logging.warning("Not removing %s: it is a symbolic link.", path)
        return
    try:
        if is_local(path):
            # shutil.rmtree unlinks links; gfile's rmtree would descend into
            # a linked directory and empty it.
            shutil.rmtree(_local(path))
        else:
            tf.io.gfile.rmtree(path)
    except (FileNotFoundError, tf.errors.NotFoundError):
        logging.info("%s was already removed", path)
    except (OSError, tf.errors.OpError) as e:
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
    """
    if is_link(path):
        raise ValueError(f"{path} is a symbolic link; links are never retired.")
    if renames_atomically(path):
        doomed = posixpath.join(posixpath.dirname(path), temp_name(now))
        try:
            tf.io.gfile.rename(path, doomed)
        except tf.errors.NotFoundError:
            logging.info("%s was already removed", path)
            return None
        return doomed
    for name in GRAPH_FILES:
        graph = posixpath.join(path, name)
        if tf.io.gfile.exists(graph):
            tf.io.gfile.remove(graph)
    return path


def fsync_tree(path: str) -> None:
    """Flushes every file and directory under a local path to the disk."""
    root = _local(path)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(temp: str, final: str, extra: tuple[str, ...] = ()) -> None:
    """Moves a complete SavedModel from `temp` to `final`.

    The staged tree is checked first (`missing_files`, with `extra`); where
    renames are atomic, `final` is checked again after the rename and taken
    out of sight if something removed files in between.

    Raises:
      FileExistsError: `final` exists already (another writer took it).
      IncompleteExportError: the staged tree lacks files; nothing was
        published.
    """
    _check_complete(temp, extra)
    if renames_atomically(final):
        _rename(temp, final)
        try:
            _check_complete(final, extra)
        except IncompleteExportError:
            retired = retire_version(final, time.time())
            if retired is not None:
                remove_tree(retired)
            raise
        return
    if tf.io.gfile.exists(final):
        raise FileExistsError(errno.EEXIST, "version exists", final)
    _copy_graph_last(temp, final)
    remove_tree(temp)


def _rename(temp: str, final: str) -> None:
    try:
        tf.io.gfile.rename(temp, final, overwrite=False)
    except tf.errors.AlreadyExistsError as e:
        raise FileExistsError(errno.EEXIST, "version exists", final) from e
    except tf.errors.FailedPreconditionError as e:  # rename(2): ENOTEMPTY
        raise FileExistsError(errno.EEXIST, "version exists", final) from e
    if is_local(final):
        _fsync_dir(posixpath.dirname(_local(final)) or ".")


def check_export_dir(export_dir) -> str:
    """Returns `export_dir` as a str; refuses a file or an unwritable place."""
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
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
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
    ancestor = os.path.abspath(_local(path))
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


def remove_empty_dir(path: str) -> None:
    """Removes a directory only if it is empty; never anything inside it.

    Raises:
      FileExistsError: `path` holds something (or is a link).
    """
    if is_link(path):
        raise FileExistsError(errno.EEXIST, "a symbolic link", path)
    if is_local(path):
        try:
            os.rmdir(_local(path))
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "not empty", path) from e
            raise
        return
    if tf.io.gfile.listdir(path):
        raise FileExistsError(errno.EEXIST, "not empty", path)
    tf.io.gfile.remove(path)


def list_files(root: str) -> list[str]:
    """Paths of the files under `root`, relative to it."""
    files = []
    for dirpath, _, filenames in tf.io.gfile.walk(root):
        rel = posixpath.relpath(dirpath, root) if dirpath != root else ""
        for name in filenames:
            path = posixpath.join(rel, name) if rel else name
            # ram:// lists "assets/.extra" for "assets.extra/...": skip names
            # that are not there.
            if tf.io.gfile.exists(posixpath.join(root, path)):
                files.append(path)
    return files


def _copy_graph_last(src: str, dst: str) -> None:
    files = list_files(src)
    # The graph file last: TF Serving loads nothing without it.
    files.sort(key=lambda f: f in GRAPH_FILES)
    for rel in files:
        target = posixpath.join(dst, rel)
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(posixpath.join(src, rel), target, overwrite=False)


def dir_size(path: str) -> int:
    """The bytes of the files under `path`."""
    return sum(
        tf.io.gfile.stat(posixpath.join(path, f)).length for f in list_files(path)
    )
