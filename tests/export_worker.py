"""A subprocess that exports for the crash and two-process tests.

python export_worker.py loop EXPORT_DIR COUNT   # COUNT exports (0: forever)
python export_worker.py crash EXPORT_DIR KEEP   # big exports until killed (no grace)
python export_worker.py fsize EXPORT_DIR LIMIT  # export under RLIMIT_FSIZE
python export_worker.py fsize_one PATH LIMIT    # export_saved_model, the same
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from kerassave_callbacks import (  # noqa: E402
    ExportError,
    VersionedExporter,
    export_saved_model,
)


def _model(width: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((64,), name="x"),
            keras.layers.Dense(width, name="wide"),
            keras.layers.Dense(4, name="out"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def loop(export_dir: str, count: int) -> None:
    exporter = VersionedExporter(export_dir, keep=None)
    model = _model(2048)
    print("ready", flush=True)
    done = 0
    while count == 0 or done < count:
        print(exporter.export(model), flush=True)
        done += 1


def crash(export_dir: str, keep: int) -> None:
    exporter = VersionedExporter(export_dir, keep=keep, grace_seconds=0)
    model = _model(16384)  # About 13 MB with Adam state: slow enough to be hit.
    print("ready", flush=True)
    while True:
        print(exporter.export(model), flush=True)


def _full_disk(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def fsize(export_dir: str, limit: int) -> None:
    exporter = VersionedExporter(export_dir, keep=None)
    model = _model(256)
    exporter.export(model)  # Fits under no limit; the second one will not.
    _full_disk(limit)
    try:
        exporter.export(model)
        result = {"error": None}
    except ExportError as e:
        result = {"error": str(e)}
    print(json.dumps(result), flush=True)


def fsize_one(path: str, limit: int) -> None:
    model = _model(256)
    _full_disk(limit)
    try:
        export_saved_model(model, path)
        result = {"error": None}
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    {"loop": loop, "crash": crash, "fsize": fsize, "fsize_one": fsize_one}[sys.argv[1]](
        sys.argv[2], int(sys.argv[3])
    )
