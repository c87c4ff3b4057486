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
import math
import os
import re
import socket
import uuid

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
# temp-<unix seconds>-<host>-<pid namespace>-<pid>-<random>: never all
# digits. The namespace says whose PIDs <pid> is one of (see `_namespace`).
_TEMP_RE = re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}$")
# Written by earlier releases, with no namespace: judged by age alone.
_OLD_TEMP_RE = re.compile(r"^temp-(\d+)-([A-Za-z0-9._]+)-(\d+)-[0-9a-f]{8}$")
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


# The export info.


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

    def to_json(self) -> dict:
        """The JSON object written to disk."""
        row = dataclasses.asdict(self)
        row["metrics"] = {str(k): finite_or_none(v) for k, v in self.metrics.items()}
        row["tags"] = list(self.tags)
        return row

    @classmethod
    def from_json(cls, value) -> ExportInfo:
        """The info of a JSON object (unknown keys ignored, bad ones None)."""
        if not isinstance(value, dict):
            return cls()
        metrics = value.get("metrics")
        return cls(
            version=_int_or_none(value.get("version")),
            epoch=_int_or_none(value.get("epoch")),
            step=_int_or_none(value.get("step")),
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            created=finite_or_none(value.get("created")),
            library=dict(value.get("library") or {}),
            tags=tuple(value.get("tags") or ()),
            names=_names_or_empty(value.get("names")),
        )


def _names_or_empty(value) -> dict:
    """The `names` field if it is {"inputs"|"outputs": {str: str}}, else {}."""
    if not isinstance(value, dict):
        return {}
    return {
        group: dict(pairs)
        for group, pairs in value.items()
        if group in ("inputs", "outputs")
        and isinstance(pairs, dict)
        and all(isinstance(x, str) for kv in pairs.items() for x in kv)
    }


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
