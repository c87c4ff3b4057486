"""A model server following the export directory while `fit` exports into it
(a poller process that lists and loads as TF Serving does)."""

from __future__ import annotations

import os
import threading
import time

import grpc
import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from kerassave_callbacks import SavedModelExporter, VersionedExporter

from conftest import classifier, classifier_data
from helpers import PollerProcess, ServeProcess, wait_for


class SlowEpochs(keras.callbacks.Callback):
    """Paces training so exports come every ~0.3 s for `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.until = time.monotonic() + seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.1)
        if time.monotonic() > self.until:
            self.model.stop_training = True


def test_servers_following_keep_1_never_fail_a_load_or_a_request(tmp_path):
    """Two servers follow one directory while fit exports with keep=1 (one
    slow test for both): the poller loads like TF Serving, `kerassave serve`
    answers REST and gRPC requests all along."""
    export_dir, stop = tmp_path / "exports", tmp_path / "stop"
    poller = PollerProcess(str(export_dir), str(stop), 1.0)
    served = ServeProcess(str(export_dir), "--model_name=digits")
    asker = _Asker(served)
    try:
        exporter = SavedModelExporter(str(export_dir), keep=1, every_n_steps=3)
        x, y = classifier_data(64)
        asker.start()
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
        result = poller.finish(timeout=120)
        wait_for(lambda: asker.versions and asker.versions[-1] == written[-1])
        status = served.get("/v1/models/digits")[1]["model_version_status"]
    finally:
        asker.stop()
        poller.kill()
        served.stop()

    assert result["failed"] == []
    assert len(result["loaded"]) >= 5
    # At rest only the newest is on disk, and both servers caught up with it.
    assert len(written) == 1
    assert result["loaded"][-1] == written[0]
    # Every request after the first version was served got its answer, from
    # versions that only moved forward; the superseded ones were unloaded.
    assert asker.failures == []
    assert asker.versions == sorted(asker.versions)
    assert len(set(asker.versions)) >= 3
    assert (status[0]["version"], status[0]["state"]) == (str(written[0]), "AVAILABLE")
    assert {row["state"] for row in status[1:]} == {"END"}


class _Asker(threading.Thread):
    """Asks `kerassave serve` for predictions over REST and gRPC every 50 ms,
    from the first moment a version is available."""

    def __init__(self, served: ServeProcess):
        super().__init__()
        self.served, self.versions, self.failures = served, [], []
        self._done = threading.Event()
        self.rows = classifier_data(2)[0]

    def run(self):
        while not self._done.is_set() and not self._available():
            time.sleep(0.05)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(self.rows))
        while not self._done.is_set():
            self._ask(request)
            time.sleep(0.05)

    def _available(self) -> bool:
        code, body = self.served.get("/v1/models/digits")
        states = [row["state"] for row in body.get("model_version_status", [])]
        return code == 200 and "AVAILABLE" in states

    def _ask(self, request) -> None:
        code, body = self.served.post(
            "/v1/models/digits:predict", {"instances": self.rows.tolist()}
        )
        if code != 200:
            self.failures.append(("REST", code, body))
        try:
            reply = self.served.predictions.Predict(request, 30)
            self.versions.append(reply.model_spec.version.value)
        except grpc.RpcError as e:
            self.failures.append(("gRPC", e.code(), e.details()))

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


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
