"""A model server's view of an export directory, as TF Serving follows it.

python poller.py EXPORT_DIR STOP_FILE LOAD_SECONDS

Every second: list EXPORT_DIR, pick the newest integer-named version, wait
LOAD_SECONDS (a server that takes that long to start loading), then load it
in a fresh TF1 session (restore and init op, as TF Serving does) and run its
`serving_default` on one row of zeros. Once STOP_FILE exists, one last round
follows. Prints "listing" as it starts, "loaded VERSION" after each load,
and one JSON line at the end: the versions loaded and the failures.

On an object store (`gs://...`, read through `tf.io.gfile`), where a version
is moved object by object, the directory of a version is listed before its
graph file is there: TF Serving's load of it then fails for want of a
SavedModel and is retried later, which the poller lists as `retried`. After
every listing it also checks each version whose graph file is there for its
other files (`incomplete`: a version a server could load half-written).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The completeness check reads an object store as it is now: TF's GCS file
# system would otherwise answer `exists` from a stat cache of 5 s.
os.environ.setdefault("GCS_STAT_CACHE_MAX_AGE", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def local_versions(export_dir: str) -> list[int]:
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(n) for n in os.listdir(export_dir) if n.isdigit())


def store_versions(export_dir: str) -> list[int]:
    """The integer-named entries of an object store directory."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_dir)]
    return sorted(int(n) for n in names if n.isdigit())


def half_written(export_dir: str, listed: list[int]) -> list:
    """[version, files lacking] of each version whose graph file is there."""
    found = []
    for version in listed:
        path = f"{export_dir}/{version}"
        if tf.io.gfile.exists(f"{path}/saved_model.pb"):
            lacking = missing(path)
            if lacking:
                found.append([version, lacking])
    return found


def missing(path: str) -> list[str]:
    """What a version whose graph file is there lacks of the rest."""
    files = {
        os.path.relpath(os.path.join(d, f), path)
        for d, _, names in tf.io.gfile.walk(path)
        for f in names
    }
    want = ["variables/variables.index", "assets.extra/export_info.json"]
    lacking = [f for f in want if f not in files]
    if not any(f.startswith("variables/variables.data-") for f in files):
        lacking.append("variables/variables.data-*")
    return lacking


def load_and_run(path: str) -> None:
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        feeds = {}
        for info in sig.inputs.values():
            shape = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
            feeds[info.name] = np.zeros(shape, tf.dtypes.as_dtype(info.dtype).name)
        sess.run([t.name for t in sig.outputs.values()], feeds)


def main(export_dir: str, stop_file: str, load_seconds: float) -> None:
    store = "://" in export_dir
    loaded, failed, retried, incomplete = [], [], [], []
    print("listing", flush=True)  # The caller may start exporting now.
    while True:
        last_round = os.path.exists(stop_file)
        listed = store_versions(export_dir) if store else local_versions(export_dir)
        if store:
            incomplete += half_written(export_dir, listed)
        if listed:
            version = listed[-1]
            path = f"{export_dir}/{version}"
            time.sleep(load_seconds)
            try:
                if store and not tf.io.gfile.exists(f"{path}/saved_model.pb"):
                    retried.append(version)  # TF Serving: not found, retried later.
                else:
                    load_and_run(path)
                    loaded.append(version)
                    print(f"loaded {version}", flush=True)
            except Exception as e:  # What the server would log.
                failed.append([version, f"{type(e).__name__}: {e}"[:300]])
        if last_round:
            break
        time.sleep(1.0)
    result = {"loaded": loaded, "failed": failed}
    if store:
        result.update(retried=retried, incomplete=incomplete)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
