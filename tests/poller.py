"""A model server's view of an export directory, as TF Serving follows it.

python poller.py EXPORT_DIR STOP_FILE LOAD_SECONDS

Every second: list EXPORT_DIR, pick the newest integer-named version, wait
LOAD_SECONDS (a server that takes that long to start loading), then load it
in a fresh TF1 session (restore and init op, as TF Serving does) and run its
`serving_default` on one row of zeros. Once STOP_FILE exists, one last round
follows. Prints one JSON line: the versions loaded and the failures.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def newest(export_dir: str) -> int | None:
    names = [n for n in os.listdir(export_dir) if n.isdigit()]
    return max(map(int, names)) if names else None


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
    loaded, failed = [], []
    while True:
        last_round = os.path.exists(stop_file)
        version = newest(export_dir) if os.path.isdir(export_dir) else None
        if version is not None:
            time.sleep(load_seconds)
            try:
                load_and_run(os.path.join(export_dir, str(version)))
                loaded.append(version)
            except Exception as e:  # What the server would log.
                failed.append([version, f"{type(e).__name__}: {e}"[:300]])
        if last_round:
            break
        time.sleep(1.0)
    print(json.dumps({"loaded": loaded, "failed": failed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
