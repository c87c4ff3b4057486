"""Reading exports back the way users and servers do."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from kerassave_callbacks import cli

POLLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "poller.py")


def saved_model_cli() -> list[str]:
    """The command that runs TensorFlow's saved_model_cli."""
    cli = shutil.which("saved_model_cli")
    return (
        [cli]
        if cli
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )


def cluster_configs(workers: int) -> list[str]:
    """`TF_CONFIG` of each worker of a cluster on free loopback ports."""
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(workers)
    ]


def serve_tf2(path: str, feeds: dict) -> dict:
    """Runs `serving_default` of the `serve` graph via tf.saved_model.load."""
    loaded = tf.saved_model.load(path, tags=["serve"])
    fn = loaded.signatures["serving_default"]
    return {
        k: v.numpy()
        for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()
    }


def run_tf1(path: str, tag: str, signature_key: str, feeds: dict, runs: int = 1):
    """Loads one MetaGraph in a TF1 session and runs a signature `runs` times."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, [tag], path)
        sig = meta.signature_def[signature_key]
        feed = {sig.inputs[k].name: v for k, v in feeds.items()}
        fetch = {k: t.name for k, t in sig.outputs.items()}
        return [sess.run(fetch, feed) for _ in range(runs)]


def trained_export(tmp_path, signatures=None):
    """Fits the classifier for two epochs and exports it (with `signatures`):
    (model, path, x, y)."""
    from kerassave_callbacks import export_saved_model

    from conftest import classifier, classifier_data

    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(model, path, signatures=signatures)
    return model, path, x, y


def value_bytes(variables) -> list[bytes]:
    """The values of `variables`, as a sorted list of bytes: equal lists
    mean the same values, whatever the variables are named or ordered."""
    return sorted(np.asarray(v).tobytes() for v in variables)


def assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def fit_classifier(callbacks, epochs=3, model=None, **kwargs):
    """Fits the classifier (or `model`) on its data, batches of 8."""
    from conftest import classifier, classifier_data

    x, y = classifier_data()
    model = model or classifier()
    model.fit(
        x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks, **kwargs
    )
    return model


def events(run_dir) -> event_accumulator.EventAccumulator:
    """Every event of a run directory, loaded."""
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def run_python(script: str, *args) -> str:
    """Runs `python -c script args` in a fresh process; returns the last line
    it printed (the test fails with its stderr if it fails)."""
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


class BreakExportDir(keras.callbacks.Callback):
    """Turns export_dir into a file at epoch `break_at` (exports then fail)
    and back into a directory at epoch `mend_at`, or when training ends with
    `mend_at_end`. Given the `SavedModelExporter`, it lets its async write in
    flight end first."""

    def __init__(
        self, path, break_at=1, mend_at=None, exporter=None, mend_at_end=False
    ):
        super().__init__()
        self.path, self.break_at, self.mend_at = path, break_at, mend_at
        self.exporter, self.mend_at_end = exporter, mend_at_end

    def _settle(self):
        """Lets the async write in flight end (without taking its error)."""
        pending = self.exporter.exporter.pending if self.exporter else None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # Its error is for the exporter to report.
                pass

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.break_at:
            self._settle()
            # Retention may be deleting an old version in the background.
            while self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
            self.path.write_text("not a directory")
        if epoch == self.mend_at:
            self._settle()
            self.path.unlink()

    def on_train_end(self, logs=None):
        self._settle()
        if self.mend_at_end and self.path.is_file():
            self.path.unlink()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(logdir, ready):
    """A real TensorBoard on a free loopback port, as `tensorboard --logdir`
    starts it; yields its base URL once `ready(base_url)` is true (polled
    for at most 90 s), and stops it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if ready(base):
                    break
            except OSError:
                pass  # Not listening yet.
            time.sleep(1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def chattr(flag: str, path) -> bool:
    """Runs `chattr flag path` (+i: nothing can be created in or removed
    from it, even by root); False where that is not permitted."""
    try:
        out = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except FileNotFoundError:
        return False
    return out.returncode == 0


class ServeProcess:
    """`kerassave serve ARGS` in a subprocess, on free loopback ports."""

    def __init__(self, *args: str):
        # Its log goes to a file: a pipe nobody reads would block the
        # server once full.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kerassave_callbacks", "serve", *args]
            + ["--port=0", "--rest_api_port=0", "--file_system_poll_wait_seconds=0.2"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        ready = self.process.stdout.readline()
        if "REST http://" not in ready:
            self.process.kill()
            raise AssertionError(f"no ready line: {ready!r} {self.stop()}")
        self.rest = ready.split("REST ")[1].split()[0]
        self.channel = grpc.insecure_channel(ready.split("gRPC ")[1].strip())
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(
            self.channel
        )
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def get(self, path: str) -> tuple[int, dict]:
        return self._call(urllib.request.Request(self.rest + path))

    def post(self, path: str, body) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._call(urllib.request.Request(self.rest + path, data=data))

    def _call(self, request) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> str:
        """Stops the server; returns its log."""
        if hasattr(self, "channel"):
            self.channel.close()
        self.process.terminate()
        self.process.communicate(timeout=30)
        self.log.seek(0)
        return self.log.read()


class PollerProcess:
    """tests/poller.py following `export_dir` in a subprocess, returned once
    it is listing (its TensorFlow import can outlast a short fit).
    `loads` are the versions it loaded so far."""

    def __init__(self, export_dir: str, stop_file: str, load_seconds: float):
        self.stop_file = stop_file
        self.loads: list[int] = []
        self._last = ""
        self.process = subprocess.Popen(
            [sys.executable, POLLER, export_dir, stop_file, str(load_seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        ready = self.process.stdout.readline()
        if ready.strip() != "listing":
            self.process.kill()
            raise AssertionError(f"the poller did not start: {ready!r}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("loaded "):
                self.loads.append(int(line.split()[1]))
            else:
                self._last = line

    def finish(self, timeout: float = 300) -> dict:
        """Stops after one last round; returns what the poller saw."""
        open(self.stop_file, "w").close()
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return json.loads(self._last)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def kerassave_here(*args, check_code=None) -> subprocess.CompletedProcess:
    """`kerassave ARGS` by its `main`, in this process (TensorFlow is loaded
    already), with its exit code and output as a subprocess would have."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors.
            code = e.code
    done = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check_code is not None:
        assert code == check_code, done.stderr[-3000:]
    return done


def wait_for(condition, seconds: float = 30) -> None:
    """Waits until `condition()` is true; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
