"""Where the first export's time goes, per model kind, side by side with
Keras' `model.export()` in one run.

    python benchmarks/first_export_breakdown.py [--models=Dense300,ResNet50]

For each model (compiled with Adam: `Dense300` is 300 Dense(16) layers,
about 1800 variables with the optimizer's, as #30 measured; the
`keras.applications` ones, ResNet50 and EfficientNetB0 by default, are
built with weights=None at 96x96, 10 classes), prints the wall time of the
first full export through `VersionedExporter` and of `model.export()` on a
fresh copy, then the first export again under cProfile, as the share of
each phase: tracing the serve function, the train and eval steps, the
serving signatures, `tf.saved_model.save` (with its copy of every
variable into the graph it saves and its tracing of a wrapper for each
signature), splitting into one MetaGraph per mode (with the savers and the
train graph's compaction), writing the files, the fingerprint, the
publish gate, commit and retention. Profiling slows Python-heavy phases (tracing)
more than the rest: read the shares, not the seconds, against each other.
The garbage collector's time in the unprofiled export is printed too (a
profile charges it to whatever allocated last).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import pstats
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _models  # noqa: E402  (benchmarks/_models.py)
from absl import app, flags, logging  # noqa: E402

from kerassave_callbacks import VersionedExporter  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models", ["Dense300", "ResNet50", "EfficientNetB0"], "Models to measure."
)

# Phase -> (module file, function name) whose cumulative time it is.
_PHASES = {
    "trace serve function": ("tracing.py", "_trace_predict"),
    "trace train + eval steps": ("tracing.py", "_trace_step"),
    "serving signatures": ("serving_signatures.py", "build"),
    "tf.saved_model.save": ("mode_graphs.py", "_tf_save"),
    "  of which copying variables": ("save.py", "map_resources"),
    "  of which signature wrappers": (
        "signature_serialization.py",
        "canonicalize_signatures",
    ),
    "split by mode (+ savers)": ("graph_split.py", "split_by_mode"),
    "  of which savers": ("graph_savers.py", "add_saver"),
    "  of which compacting the train graph": (
        "graph_compaction.py",
        "compact_train_graph",
    ),
    "fingerprint": ("_fingerprint.py", "write"),
    "publish gate": ("validation.py", "gate_problems"),
    "commit": ("exporter.py", "_commit"),
    "retention, size, record": ("exporter.py", "_after_commit"),
}
_WRITE = ("mode_graphs.py", "write")
_SERIALIZE = ("mode_graphs.py", "_serialize_graphs")
_TOTAL = ("exporter.py", "export")


def _cumulative(stats: pstats.Stats) -> dict:
    """(file name, function) -> cumulative seconds, summed over callers."""
    out = {}
    for (path, _, function), row in stats.stats.items():
        key = (os.path.basename(path), function)
        out[key] = out.get(key, 0.0) + row[3]
    return out


@contextlib.contextmanager
def _collections(seconds: dict):
    """Adds to `seconds` (generation -> seconds) the time each garbage
    collection within the block takes."""
    started = []

    def record(phase, info):
        if phase == "start":
            started.append(time.perf_counter())
        else:
            took = time.perf_counter() - started.pop()
            seconds[info["generation"]] = seconds.get(info["generation"], 0.0) + took

    gc.callbacks.append(record)
    try:
        yield
    finally:
        gc.callbacks.remove(record)


def measure(name: str, work: str) -> None:
    model = _models.by_name(name)
    exporter = VersionedExporter(f"{work}/ours-{name}")
    collections: dict[int, float] = {}
    with _collections(collections):
        ours = _models.seconds(lambda: exporter.export(model))
    fresh = _models.by_name(name)
    keras_seconds = _models.seconds(
        lambda: fresh.export(f"{work}/keras-{name}", verbose=False)
    )
    profiled = _models.by_name(name)
    profiling = VersionedExporter(f"{work}/profiled-{name}")
    profile = cProfile.Profile()
    profile.runcall(profiling.export, profiled)
    seconds = _cumulative(pstats.Stats(profile))
    total = seconds[_TOTAL]
    print(
        f"{name}: {len(profiled.variables) + len(profiled.optimizer.variables)} "
        f"variables; first full export {ours:.2f} s, model.export() "
        f"{keras_seconds:.2f} s, ratio {ours / keras_seconds:.2f}"
    )
    print(
        f"  garbage collection {sum(collections.values()):.2f} s of it, full "
        f"collections {collections.get(2, 0.0):.2f} s"
    )
    rows = {label: seconds.get(key, 0.0) for label, key in _PHASES.items()}
    rows["write the files"] = seconds.get(_WRITE, 0.0) - seconds.get(_SERIALIZE, 0.0)
    for label, value in rows.items():
        print(f"  {label:30s} {100 * value / total:5.1f} %")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as work:
        for name in _MODELS.value:
            measure(name, work)


if __name__ == "__main__":
    app.run(main)
