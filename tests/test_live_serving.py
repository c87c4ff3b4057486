"""A model server following the export directory while `fit` exports into it
(a poller process that lists and loads as TF Serving does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np

from kerassave_callbacks import SavedModelExporter, VersionedExporter

from conftest import classifier, classifier_data

POLLER = os.path.join(os.path.dirname(__file__), "poller.py")


class SlowEpochs(keras.callbacks.Callback):
    """Paces training so exports come every ~0.3 s for `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.until = time.monotonic() + seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.1)
        if time.monotonic() > self.until:
            self.model.stop_training = True


def test_a_server_following_keep_1_never_fails_a_load(tmp_path):
    export_dir, stop = tmp_path / "exports", tmp_path / "stop"
    poller = subprocess.Popen(
        [sys.executable, POLLER, str(export_dir), str(stop), "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        exporter = SavedModelExporter(str(export_dir), keep=1, every_n_steps=3)
        x, y = classifier_data(64)
        classifier().fit(
            x,
            y,
            epochs=100,
            batch_size=8,
            verbose=0,
            callbacks=[exporter, SlowEpochs(seconds=10)],
        )
        exporter.close()
        written = exporter.versions()
        stop.touch()
        result = json.loads(poller.communicate(timeout=120)[0].strip())
    finally:
        poller.kill()

    assert result["failed"] == []
    assert len(result["loaded"]) >= 5
    # At rest only the newest is on disk, and the server caught up with it.
    assert len(written) == 1
    assert result["loaded"][-1] == written[0]


def test_superseded_versions_stay_their_grace_period_then_go(tmp_path):
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=1, grace_seconds=3)
    first, second, third = (
        int(os.path.basename(exporter.export(model))) for _ in range(3)
    )

    # Superseded moments ago: still listed, servable.
    assert exporter.versions() == [first, second, third]
    started = time.monotonic()
    exporter.wait()
    waited = time.monotonic() - started

    assert exporter.versions() == [third]
    assert sorted(os.listdir(tmp_path)) == [str(third)]
    assert waited <= 3.5
    exporter.close()


def test_grace_zero_deletes_at_once(tmp_path):
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=1, grace_seconds=0)
    paths = [exporter.export(model) for _ in range(3)]
    assert exporter.versions() == [int(os.path.basename(paths[-1]))]
    exporter.close()
    np.testing.assert_equal(sorted(os.listdir(tmp_path)), [os.path.basename(paths[-1])])
