"""Exports to `gs://` through TensorFlow's own GCS file system, then reads
back as users and servers do; run by tests/test_gcs.py inside
tests/gcs_namespace.sh (a GCS emulator behind Google's host names).

    python tests/gcs_worker.py WORKDIR

Prints one JSON object: what each step saw, for the tests to assert on.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerassave_callbacks import (  # noqa: E402
    ExportDir,
    SavedModelExporter,
    VersionedExporter,
    _fs,  # noqa: E402
    load_from_saved_model,
)

sys.path.insert(0, os.path.dirname(__file__))
from conftest import classifier, classifier_data  # noqa: E402
from helpers import PollerProcess, kerassave_here, wait_for  # noqa: E402

MODELS = "gs://bucket/models/m"


def kerassave(*args) -> tuple[int, object]:
    """`kerassave ARGS --json`: its exit code and what it printed."""
    done = kerassave_here(*args, "--json")
    return done.returncode, json.loads(done.stdout or "null")


def fit_while_a_server_follows(work: str) -> dict:
    """SavedModelExporter in fit, keep=1, while the poller follows."""
    poller = PollerProcess(MODELS, os.path.join(work, "stop"), 0.5)
    keras.utils.set_random_seed(7)
    x, y = classifier_data(48)
    model = classifier()
    exporter = SavedModelExporter(MODELS, keep=1, monitor="val_loss", keep_best=1)

    def linger(epoch, logs):
        # The first version stays the newest until the poller has loaded it:
        # the poller then sees it and the last (loaded at the end) at least.
        if epoch == 0:
            wait_for(lambda: poller.loads, seconds=120)

    model.fit(
        x,
        y,
        epochs=3,
        batch_size=8,
        validation_split=0.25,
        verbose=0,
        callbacks=[exporter, keras.callbacks.LambdaCallback(on_epoch_end=linger)],
    )
    exporter.close()
    served = poller.finish()
    newest = max(exporter.versions())
    path = f"{MODELS}/{newest}"
    loaded = tf.saved_model.load(path, tags=["serve"])
    (tf2,) = loaded.signatures["serving_default"](features=tf.constant(x[:4])).values()
    restored = load_from_saved_model(path)
    return {
        "served": served,
        "versions": exporter.versions(),
        "listed": [r.version for r in ExportDir(MODELS).describe()],
        "tf2_diff": float(np.abs(tf2.numpy() - model(x[:4]).numpy()).max()),
        "restored_diff": float(
            np.abs(restored(x[:4]).numpy() - model(x[:4]).numpy()).max()
        ),
        "restored_optimizer_steps": int(restored.optimizer.iterations.numpy()),
        "optimizer_steps": int(model.optimizer.iterations.numpy()),
        "bucket": sorted(tf.io.gfile.listdir(MODELS)),
    }


def grace_and_tools() -> dict:
    """Retention's grace period, then `kerassave` on the bucket."""
    where = "gs://bucket/models/g"
    model = classifier()
    with VersionedExporter(where, keep=1, grace_seconds=8) as exporter:
        first = os.path.basename(exporter.export(model, metrics={"loss": 0.5}))
        second = os.path.basename(exporter.export(model, metrics={"loss": 0.4}))
        during = exporter.versions()
        exporter.wait()  # At most 8 s: the grace period of `first`.
        after = exporter.versions()
    with VersionedExporter(where, keep=None, grace_seconds=0) as exporter:
        exporter.export(model, metrics={"loss": 0.3})
        two = exporter.versions()
    return {
        "first": int(first),
        "second": int(second),
        "during_grace": during,
        "after_grace": after,
        "two": two,
        "list": kerassave("list", where),
        "verify": kerassave("verify", where),
        "prune": kerassave("prune", where, "--keep", "1", "--grace_seconds", "0"),
        "after_prune": ExportDir(where).versions(),
    }


def listing() -> dict:
    """A tree listed as the exporter lists it (one glob per depth on GCS):
    files at every depth, an empty directory (a marker object) left out."""
    root = "gs://bucket/tree"
    names = ["saved_model.pb", "variables/variables.index", "assets/k/0/vocab.txt"]
    for name in names:
        tf.io.gfile.makedirs(os.path.dirname(f"{root}/{name}"))
        with tf.io.gfile.GFile(f"{root}/{name}", "wb") as f:
            f.write(b"x")
    tf.io.gfile.makedirs(f"{root}/empty/deeper")
    return {"written": sorted(names), "listed": _fs.files(root)}


def main(work: str) -> None:
    report = {
        "fit": fit_while_a_server_follows(work),
        "tools": grace_and_tools(),
        "listing": listing(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
