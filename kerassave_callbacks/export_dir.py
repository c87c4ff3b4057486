"""ExportDir: a read-only view of an export directory and its versions.

The one reader of an export directory (the names come from `layout`):
which versions are complete, what each one's `export_info.json` says, its
size and tags. Nothing here writes or deletes; `VersionedExporter`, the
`kerassave` command and the dashboard build on it. A local directory is read
without importing TensorFlow or Keras; only the tags of an export written
by an earlier release (which did not record them) are read from its graph.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

from absl import logging

from kerassave_callbacks import _files, _fs, _rejected, fields, layout, retention
from kerassave_callbacks.layout import finite_or_none


@dataclasses.dataclass(frozen=True)
class Version:
    """One complete version, as `kerassave list` shows it.

    Attributes:
      version: the integer version.
      path: its directory.
      created: unix time it was written (export info), or None.
      epoch: the epochs completed when it was exported, or None.
      step: the optimizer step it was exported at, or None.
      metrics: the metrics recorded with it.
      size_bytes: the bytes of its files.
      tags: the tag sets of its MetaGraphs, e.g. `["serve", "train", "eval"]`
        (several tags of one MetaGraph joined with ",").
      pinned: a symbolic link the user put in; retention never deletes it.
    """

    version: int
    path: str
    created: float | None
    epoch: int | None
    step: int | None
    metrics: dict
    size_bytes: int
    tags: list[str]
    pinned: bool = False

    def to_json(self) -> dict:
        """The row of `kerassave list --json`."""
        row = dataclasses.asdict(self)
        del row["pinned"]
        return row


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A version the publish gate refused, kept as `rejected-<version>`.

    Attributes:
      version: the version it would have been.
      path: the directory of the kept copy.
      rejected: unix time of the rejection, or None.
      problems: why it was refused, one line per failed check.
    """

    version: int
    path: str
    rejected: float | None
    problems: list[str]

    def to_json(self) -> dict:
        """The row of `kerassave list --rejected --json`."""
        return {**dataclasses.asdict(self), "status": "rejected"}


_REJECTION_FIELDS = {"rejected": fields.unix_time, "problems": fields.texts}


_TF_SERVING = layout.TF_SERVING


class ExportDir:
    """A read-only view of `<export_dir>/<version>/...`.

    Example:

        export_dir = ExportDir("/models/digits")
        for version in export_dir.describe():
            print(version.version, version.metrics, version.size_bytes)

    Args:
      path: the export directory (any `tf.io.gfile` path). It need not exist.
      layout: where each version keeps its SavedModel. Defaults to
        `layout.TF_SERVING` (the version directory is the SavedModel).
    """

    def __init__(self, path: str, layout: layout.DirectoryLayout | None = None):
        self.path = str(path).rstrip("/") or "/"
        self.layout = layout or _TF_SERVING

    def exists(self) -> bool:
        """True when the path is a directory."""
        return _fs.isdir(self.path)

    def version_path(self, version: int) -> str:
        """The directory of a version."""
        return posixpath.join(self.path, str(version))

    def saved_model_path(self, version: int) -> str:
        """The SavedModel directory of a version (where `layout` puts it)."""
        return self.layout.root(self.version_path(version))

    def versions(self) -> list[int]:
        """The complete versions (integer names holding a graph), oldest first."""
        return _files.complete_versions(self.path, self.layout)

    def all_versions(self) -> list[int]:
        """Every integer-named entry, complete or not, oldest first (what TF
        Serving would consider)."""
        names = (layout.version_name(n) for n in _files.entries(self.path))
        return sorted(v for v in names if v is not None)

    def next_version(self, now: float, floor: int = 0) -> int:
        """The number a new version takes: `now` in whole seconds, raised
        above every version, every rejected number (never reused) and
        `floor`, so versions strictly increase, also within one second."""
        taken = self.versions() + _rejected.versions(self.path) + [floor]
        return max(int(now), max(taken) + 1)

    def rejected(self) -> list[Rejected]:
        """The rejected copies (`rejected-<version>`), oldest first, with the
        reasons their `rejection.json` gives."""
        rows = []
        for version in _rejected.versions(self.path):
            path = posixpath.join(self.path, layout.rejected_name(version))
            reason_path = posixpath.join(path, layout.REJECTION)
            reason = fields.read(
                read_json(reason_path) or {}, _REJECTION_FIELDS, reason_path
            )
            rows.append(
                Rejected(
                    version=version,
                    path=path,
                    rejected=reason["rejected"],
                    problems=reason["problems"]
                    or [f"{layout.REJECTION} is missing or unreadable"],
                )
            )
        return rows

    def info(self, version: int) -> dict:
        """The version's `export_info.json`, each field checked (a field of
        the wrong type reads as None, with a warning); {} when missing or
        unreadable."""
        return info_json(self.saved_model_path(version))

    def _info(self, version: int) -> layout.ExportInfo:
        return read_info(self.saved_model_path(version)) or layout.ExportInfo()

    def is_pinned(self, version: int) -> bool:
        """True for a link the user put in, or a version a link points to."""
        return version in self._pinned([version])

    def _pinned(self, versions: list[int]) -> set[int]:
        """Of `versions`, the links the user put in and the versions a link
        points to (the directory is read once)."""
        linked = _files.linked_versions(self.path)
        return {
            v for v in versions if v in linked or _files.is_link(self.version_path(v))
        }

    def describe(self, versions: list[int] | None = None) -> list[Version]:
        """A `Version` per complete version (or per one of `versions`).

        A version that retention retires while it is read is not listed.
        """
        versions = self.versions() if versions is None else versions
        pinned = self._pinned(versions)
        rows = []
        for version in versions:
            try:
                rows.append(self._describe(version, version in pinned))
            except FileNotFoundError:
                if _files.has_graph(self.saved_model_path(version)):
                    raise
                logging.info("Version %d went away while it was listed.", version)
        return rows

    def _describe(self, version: int, pinned: bool) -> Version:
        path = self.version_path(version)
        info = self._info(version)
        return Version(
            version=version,
            path=path,
            created=info.created,
            epoch=info.epoch,
            step=info.step,
            metrics=dict(info.metrics),
            size_bytes=_files.dir_size(path),
            tags=list(info.tags) if info.tags else tags(self.saved_model_path(version)),
            pinned=pinned,
        )

    def for_retention(
        self, monitor: str | None, infos: dict | None = None
    ) -> list[retention.Candidate]:
        """What retention needs to know of each complete version.

        Args:
          monitor: the metric `keep_best` ranks by.
          infos: a cache of export infos by version: those missing are
            read from disk and added to it.
        """
        known = []
        versions = self.versions()
        pinned = self._pinned(versions)
        for version in versions:
            if version in pinned:
                known.append(retention.Candidate(version, float(version), pinned=True))
                continue
            info = infos.get(version) if infos is not None else None
            if info is None:
                info = self._info(version)
                if infos is not None:
                    infos[version] = info
            known.append(
                retention.Candidate(
                    version,
                    created=info.created or float(version),
                    metric=finite_or_none(info.metrics.get(monitor)),
                    info=info,
                )
            )
        return known


def read_info(version_path: str) -> layout.ExportInfo | None:
    """`export_info.json` of a version directory, each field checked
    (`layout.ExportInfo.from_json`: a bad field reads as missing, with a
    warning); None when the file is missing or no JSON (with a warning)."""
    path = posixpath.join(version_path, layout.EXPORT_INFO)
    value = read_json(path)
    return None if value is None else layout.ExportInfo.from_json(value, path)


def info_json(version_path: str) -> dict:
    """`read_info` as the JSON object users see; {} when there is none."""
    info = read_info(version_path)
    return {} if info is None else info.to_json()


def read_json(path: str):
    """The JSON value in `path`; None when missing or not JSON (a warning)."""
    try:
        data = _fs.read_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        logging.warning("Could not read %s: %s", path, e)
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:
        logging.warning("%s is not JSON (%s): read as missing.", path, e)
        return None


def tags(saved_model_path: str) -> list[str]:
    """The tag sets of a SavedModel's MetaGraphs, read from its graph file
    ([] when it cannot be read). Imports TensorFlow."""
    from kerassave_callbacks.core import loader

    try:
        saved = loader.read_saved_model(saved_model_path)
    except (FileNotFoundError, ValueError):
        return []
    return [",".join(m.meta_info_def.tags) for m in saved.meta_graphs]
