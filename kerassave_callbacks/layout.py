"""The on-disk format, named once: file names, checkpoint keys, version and
temporary names, and the export info.

A leaf: it imports neither TensorFlow nor Keras, so everything that only
reads an export directory (`ExportDir`, `kerassave list`, the dashboard)
starts in a blink. Writers, the loader and the command line take every
name from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import uuid

from kerassave_callbacks import fields

# What TF Serving reads: the graph file and variables/; from assets.extra/
# only the warm-up requests.
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
GRAPH_FILES = (SAVED_MODEL_PB, SAVED_MODEL_PBTXT)
VARIABLES_DIR = "variables"
VARIABLES_PREFIX = "variables/variables"  # .index and .data-* beside it
FINGERPRINT = "fingerprint.pb"
ASSETS_DIR = "assets"
MODEL_JSON = "assets/saved_model.json"
# Under assets/: what Keras layers save beside their config (an adapted
# lookup layer's vocabulary), one folder per layer index.
LAYER_ASSETS = "keras_layers"
EXPORT_INFO = "assets.extra/export_info.json"
WARMUP_REQUESTS = "assets.extra/tf_serving_warmup_requests"


@dataclasses.dataclass(frozen=True)
class DirectoryLayout:
    """Where a version's SavedModel and its info live in its directory
    `<export_dir>/<version>/`.

    TF Serving's (`TF_SERVING`): the version directory is the SavedModel.
    A layout whose servers want the SavedModel one level down (Triton's
    `<model>/<version>/model.savedmodel`) is one value:

        DirectoryLayout(saved_model_dir="model.savedmodel")

    Attributes:
      saved_model_dir: the SavedModel's directory inside the version's, ""
        for the version's own.
    """

    saved_model_dir: str = ""

    def __post_init__(self):
        part = self.saved_model_dir
        if not isinstance(part, str) or part.startswith("/") or ".." in part.split("/"):
            raise ValueError(
                "`saved_model_dir` must be a relative path inside the version "
                f"directory, e.g. 'model.savedmodel'. Received: {part!r}."
            )

    def root(self, version_dir: str) -> str:
        """The SavedModel directory of a version (or staged) directory."""
        if not self.saved_model_dir:
            return version_dir
        return f"{version_dir.rstrip('/')}/{self.saved_model_dir.strip('/')}"

    def info_path(self, version_dir: str) -> str:
        """Where a version's `export_info.json` is."""
        return f"{self.root(version_dir).rstrip('/')}/{EXPORT_INFO}"


TF_SERVING = DirectoryLayout()


# Checkpoint keys: `<group>/<index>/.ATTRIBUTES/VARIABLE_VALUE`, the groups
# being attributes of the saved root object, plus TF's object graph.
MODEL_VARIABLES = "model_variables"
OPTIMIZER_VARIABLES = "optimizer_variables"
METRIC_VARIABLES = "metric_variables"
VARIABLE_GROUPS = (MODEL_VARIABLES, OPTIMIZER_VARIABLES, METRIC_VARIABLES)
RESOURCES = "resources"  # Lookup tables the graphs use (no values).
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def variable_key(group: str, index: int) -> str:
    """The checkpoint key of variable `index` of `group`."""
    return f"{group}/{index}{VARIABLE_SUFFIX}"


# Versions and temporaries.


def version_name(name: str) -> int | None:
    """The version of an integer-named entry (`"123"` or `"123/"`), else None.

    Only canonical decimals count: "0123" is no version (its path would not
    be `str(123)`), so nothing here ever touches it.
    """
    name = name.rstrip("/")
    if name.isascii() and name.isdigit() and name == str(int(name)):
        return int(name)
    return None


# A staged version that failed the publish gate: kept under a name TF
# Serving ignores, with its reasons in REJECTION.
REJECTED_PREFIX = "rejected-"
REJECTION = "rejection.json"


def rejected_name(version: int) -> str:
    """The name a rejected version is kept under."""
    return f"{REJECTED_PREFIX}{int(version)}"


def rejected_version(name: str) -> int | None:
    """The version of a rejected copy's name, else None (inverse of
    `rejected_name`)."""
    name = name.rstrip("/")
    if not name.startswith(REJECTED_PREFIX):
        return None
    return version_name(name[len(REJECTED_PREFIX) :])


TEMP_PREFIX = "temp-"
# temp-<unix seconds>-<host>-<pid namespace>-<pid>-<start>-<random>: never
# all digits. The namespace says whose PIDs <pid> is one of (see
# `_namespace`); <start> is when that process started (see `_started`), so
# a PID used again by another process (PID 1 of every container restart)
# does not pass for the writer.
_TEMP_RE = re.compile(
    r"^temp-(\d+)-([A-Za-z0-9._]+)-([0-9a-f]{8})-(\d+)-(\d+)-[0-9a-f]{8}$"
)
# Written by earlier releases: without the start time, and before that
# without the namespace too.
_OLDER_TEMP_RES = (
    re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)-([0-9a-f]{8})-(\d+)()-[0-9a-f]{8}$"),
    re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)()-(\d+)()-[0-9a-f]{8}$"),
)
# A temporary whose writer's liveness cannot be checked (another host, or
# another PID namespace: a container beside this one), or an incomplete
# version on a copy-commit file system, is taken as abandoned once it is
# this old: far longer than any export takes.
STALE_SECONDS = 3600.0
# A temporary written beside a file it replaces: `<file>.temp-...`.
SIDE_TEMP = "." + TEMP_PREFIX


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _namespace() -> str:
    """Whose PIDs this process's PID is one of: a digest of the kernel's
    boot id and this process's PID namespace. Containers of one pod share
    the host name but not their PID namespaces; two machines never share a
    boot id."""
    parts = []
    for path, read in (
        ("/proc/sys/kernel/random/boot_id", _read_text),
        ("/proc/self/ns/pid", os.readlink),
    ):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _started(pid: int | str = "self") -> int | None:
    """When process `pid` started, in clock ticks since the boot (field 22
    of `/proc/<pid>/stat`); None where that cannot be read (no /proc, or a
    /proc that shows another PID namespace than this process's)."""
    try:
        if pid != "self" and os.readlink(f"/proc/{pid}/ns/pid") != os.readlink(
            "/proc/self/ns/pid"
        ):
            return None
        stat = _read_text(f"/proc/{pid}/stat")
        # The command name (field 2) is in parentheses and may hold spaces.
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def temp_name(now: float) -> str:
    """A fresh temporary name, carrying who writes it and since when."""
    return (
        f"{TEMP_PREFIX}{int(now)}-{_host()}-{_namespace()}-{os.getpid()}-"
        f"{_started() or 0}-{uuid.uuid4().hex[:8]}"
    )


@dataclasses.dataclass(frozen=True)
class Temp:
    """What a temporary's name says of its writer.

    Attributes:
      created: unix time (seconds) it was made.
      host: the writer's host name (sanitized).
      namespace: the writer's PID namespace digest; None in names of
        earlier releases.
      pid: the writer's PID in that namespace.
      started: when the writer started (clock ticks since the boot); None
        in names of earlier releases or where /proc was not readable.
    """

    created: int
    host: str
    namespace: str | None
    pid: int
    started: int | None


def parse_temp_name(name: str) -> Temp | None:
    """What a temporary name says of its writer, or None for other names."""
    for pattern in (_TEMP_RE, *_OLDER_TEMP_RES):
        match = pattern.match(name)
        if match:
            created, host, namespace, pid, started = match.groups()
            return Temp(
                int(created),
                host,
                namespace or None,
                int(pid),
                int(started) if started and started != "0" else None,
            )
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_alive(temp: Temp, now: float) -> bool:
    """Whether the writer of a temporary of this host and PID namespace
    runs: its PID runs and started when the name says. Where the start
    time cannot be compared, a running PID counts only for
    `STALE_SECONDS`, since another process may have that PID now."""
    if not _pid_alive(temp.pid):
        return False
    started = _started(temp.pid) if temp.started is not None else None
    if started is not None:
        return started == temp.started
    return now - temp.created <= STALE_SECONDS


def temp_is_abandoned(name: str, now: float) -> bool:
    """True for a temporary whose writer is gone.

    Its writer is checked only when it ran on this host in this PID
    namespace (the same kernel boot, too), where its PID and start time
    name one process; any other temporary (another host, a container
    beside this one) is abandoned only once it is `STALE_SECONDS` old, far
    longer than any export takes. A side temporary (`<file>.temp-...`) is
    judged by its temporary part.
    """
    if not name.startswith(TEMP_PREFIX):
        name = TEMP_PREFIX + name.partition(SIDE_TEMP)[2]
    temp = parse_temp_name(name)
    if temp is None:
        return False
    if temp.host == _host() and temp.namespace == _namespace():
        return not _writer_alive(temp, now)
    return now - temp.created > STALE_SECONDS


def side_temp_name(path: str, now: float) -> str:
    """Where a file that replaces `path` is written first."""
    return f"{path}.{temp_name(now)}"


# The export info.


def json_bytes(value) -> bytes:
    """How the JSON files of an export are written (`export_info.json`,
    `rejection.json`): indented, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True).encode()


def finite_or_none(value) -> float | None:
    """`value` as a finite float, or None (missing, NaN, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """`assets.extra/export_info.json`: what an export records of itself.

    Attributes:
      version: the integer version (None before one is allocated).
      epoch: the epoch it was taken at, or None.
      step: the optimizer step it was taken at, or None.
      metrics: metric name -> value (None for non-finite values).
      created: unix time it was written, or None.
      library: versions of this package, TensorFlow and Keras.
      tags: the tag sets of its MetaGraphs, e.g. `["serve", "train",
        "eval"]` (several tags of one MetaGraph joined with ","); empty in
        exports of earlier releases, which did not record them.
      names: "inputs" and "outputs" -> Keras name -> signature key (see
        docs/format.md); empty in exports of earlier releases.
    """

    version: int | None = None
    epoch: int | None = None
    step: int | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    created: float | None = None
    library: dict = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    names: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # Metric values as JSON holds them: floats, None for non-finite.
        metrics = {str(k): finite_or_none(v) for k, v in self.metrics.items()}
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "tags", tuple(self.tags))

    def to_json(self) -> dict:
        """The JSON object written to disk."""
        row = dataclasses.asdict(self)
        row["tags"] = list(self.tags)
        return row

    @classmethod
    def from_json(cls, value, source: str = EXPORT_INFO) -> ExportInfo:
        """The info of a JSON object, each field checked (`fields.read`): a
        field of the wrong type reads as missing, with a warning naming
        `source` and the field. Unknown keys are ignored."""
        row = fields.read(value, INFO_FIELDS, source)
        return cls(
            version=row["version"],
            epoch=row["epoch"],
            step=row["step"],
            metrics=row["metrics"] or {},
            created=row["created"],
            library=row["library"] or {},
            tags=tuple(row["tags"] or ()),
            names=row["names"] or {},
        )


# The fields of export_info.json, each with its type (`fields.read`).
INFO_FIELDS = {
    "version": fields.count,
    "epoch": fields.count,
    "step": fields.count,
    "metrics": fields.metrics,
    "created": fields.unix_time,
    "library": fields.text_map,
    "tags": fields.texts,
    "names": fields.names,
}
