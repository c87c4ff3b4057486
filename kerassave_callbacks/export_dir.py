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

from kerassave_callbacks import _files, _fs, layout, retention
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


class ExportDir:
    """A read-only view of `<export_dir>/<version>/...`.

    Example:

        export_dir = ExportDir("/models/digits")
        for version in export_dir.describe():
            print(version.version, version.metrics, version.size_bytes)

    Args:
      path: the export directory (any `tf.io.gfile` path). It need not exist.
    """

    def __init__(self, path: str):
        self.path = str(path).rstrip("/") or "/"

    def exists(self) -> bool:
        """True when the path is a directory."""
        return _fs.isdir(self.path)

    def version_path(self, version: int) -> str:
        return posixpath.join(self.path, str(version))

    def versions(self) -> list[int]:
        """The complete versions (integer names holding a graph), oldest first."""
        return _files.complete_versions(self.path)

    def all_versions(self) -> list[int]:
        """Every integer-named entry, complete or not, oldest first (what TF
        Serving would consider)."""
        names = (layout.version_name(n) for n in _files.entries(self.path))
        return sorted(v for v in names if v is not None)

    def rejected(self) -> list[Rejected]:
        """The rejected copies (`rejected-<version>`), oldest first, with the
        reasons their `rejection.json` gives."""
        rows = []
        for version in _files.rejected_versions(self.path):
            path = posixpath.join(self.path, layout.rejected_name(version))
            reason = _read_json(posixpath.join(path, layout.REJECTION))
            problems = reason.get("problems")
            if not isinstance(problems, list):
                problems = [f"{layout.REJECTION} is missing or unreadable"]
            rows.append(
                Rejected(
                    version=version,
                    path=path,
                    rejected=finite_or_none(reason.get("rejected")),
                    problems=[str(p) for p in problems],
                )
            )
        return rows

    def info(self, version: int) -> dict:
        """The version's `export_info.json`, or {} when missing or unreadable."""
        return read_info(self.version_path(version))

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
        """A `Version` per complete version (or per one of `versions`)."""
        rows = []
        versions = self.versions() if versions is None else versions
        pinned = self._pinned(versions)
        for version in versions:
            path = self.version_path(version)
            info = self.info(version)
            recorded = info.get("tags")
            rows.append(
                Version(
                    version=version,
                    path=path,
                    created=finite_or_none(info.get("created")),
                    epoch=info.get("epoch"),
                    step=info.get("step"),
                    metrics=dict(info.get("metrics") or {}),
                    size_bytes=_files.dir_size(path),
                    tags=list(recorded) if recorded else tags(path),
                    pinned=version in pinned,
                )
            )
        return rows

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
                info = self.info(version)
                if infos is not None:
                    infos[version] = info
            metric = (info.get("metrics") or {}).get(monitor)
            known.append(
                retention.Candidate(
                    version,
                    created=finite_or_none(info.get("created")) or float(version),
                    metric=finite_or_none(metric),
                )
            )
        return known


def read_info(version_path: str) -> dict:
    """`export_info.json` of a version directory; {} when missing or unreadable."""
    return _read_json(posixpath.join(version_path, layout.EXPORT_INFO))


def _read_json(path: str) -> dict:
    """The JSON object in `path`; {} when missing, unreadable or no object."""
    try:
        info = json.loads(_fs.read_bytes(path).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def tags(saved_model_path: str) -> list[str]:
    """The tag sets of a SavedModel's MetaGraphs, read from its graph file
    ([] when it cannot be read). Imports TensorFlow."""
    from kerassave_callbacks.core import loader

    try:
        saved = loader.read_saved_model(saved_model_path)
    except (FileNotFoundError, ValueError):
        return []
    return [",".join(m.meta_info_def.tags) for m in saved.meta_graphs]
