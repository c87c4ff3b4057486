"""`kerassave serve`: predict latency and throughput over REST and gRPC,
measured side by side with the floor, in one run.

    python benchmarks/serve_latency.py [--requests=500] [--clients=4] [--seconds=3]

Model: the digits classifier of examples/train_digits.py's shape (64 pixels
-> Dense(64) -> Dense(10)), one version exported with
`export_saved_model`. Each request predicts one row (the latency a user
feels between epochs), then `--clients` threads ask as fast as they can for
`--seconds` (throughput). Three ways, one after another:

- in-process: `Served.run` of the loaded signature (a TF1 session, as the
  server holds it): the floor, no server;
- gRPC: tensorflow-serving-api's `PredictionService.Predict` stub on one
  channel to a `kerassave serve` subprocess on loopback;
- REST: `POST /v1/models/digits:predict` with `{"instances": [...]}` on a
  kept-alive HTTP connection per client.

Prints p50 and p99 latency and requests per second of each, then the ratios
to the floor. The clients run on the same machine as the server: on 2
cores they compete with it for CPU, so the throughput is a floor too.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from kerassave_callbacks import export_saved_model  # noqa: E402
from kerassave_callbacks.core import served as served_lib  # noqa: E402

_REQUESTS = flags.DEFINE_integer("requests", 500, "Sequential requests timed.")
_CLIENTS = flags.DEFINE_integer("clients", 4, "Threads asking at once.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "How long the clients ask.")


def _export(root: str) -> str:
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="digit")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    export_dir = os.path.join(root, "digits")
    export_saved_model(model, os.path.join(export_dir, "1"))
    return export_dir


class _Server:
    """`kerassave serve` in a subprocess on free loopback ports."""

    def __init__(self, export_dir: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kerassave_callbacks", "serve", export_dir]
            + ["--model_name=digits", "--port=0", "--rest_api_port=0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        ready = self.process.stdout.readline()
        self.rest_port = int(ready.split("REST http://")[1].split()[0].split(":")[1])
        self.grpc_target = ready.split("gRPC ")[1].strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _in_process(export_dir: str, row: np.ndarray):
    served = served_lib.Served(os.path.join(export_dir, "1"))

    def ask():
        served.run("serving_default", {"pixels": row})

    return ask, served.close


def _grpc(target: str, row: np.ndarray):
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(row))

    def ask():
        stub.Predict(request, 30)

    return ask, channel.close


def _rest(port: int, row: np.ndarray):
    local = threading.local()
    body = json.dumps({"instances": row.tolist()})

    def ask():
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local.conn.request("POST", "/v1/models/digits:predict", body)
        reply = local.conn.getresponse()
        reply.read()
        if reply.status != 200:
            raise RuntimeError(f"REST answered {reply.status}")

    return ask, lambda: None


def _latency(ask) -> tuple[float, float]:
    for _ in range(20):
        ask()  # warm the connection and the graph
    times = []
    for _ in range(_REQUESTS.value):
        started = time.perf_counter()
        ask()
        times.append(time.perf_counter() - started)
    cut = statistics.quantiles(times, n=100)
    return cut[49], cut[98]


def _throughput(ask) -> float:
    done, deadline = [0] * _CLIENTS.value, time.monotonic() + _SECONDS.value

    def client(index):
        while time.monotonic() < deadline:
            ask()
            done[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(done))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / _SECONDS.value


def main(argv):
    del argv
    row = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    with tempfile.TemporaryDirectory() as root:
        export_dir = _export(root)
        server = _Server(export_dir)
        try:
            ways = {
                "in-process": _in_process(export_dir, row),
                "gRPC": _grpc(server.grpc_target, row),
                "REST": _rest(server.rest_port, row),
            }
            results = {}
            for name, (ask, close) in ways.items():
                p50, p99 = _latency(ask)
                results[name] = (p50, p99, _throughput(ask))
                close()
        finally:
            server.stop()
    for name, (p50, p99, rate) in results.items():
        print(
            f"{name:>10}: p50 {p50 * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms  "
            f"{rate:8.0f} requests/s ({_CLIENTS.value} clients)"
        )
    floor = results["in-process"]
    for name in ("gRPC", "REST"):
        p50, p99, rate = results[name]
        print(
            f"{name} / in-process: p50 {p50 / floor[0]:.1f}x, p99 "
            f"{p99 / floor[1]:.1f}x, throughput {rate / floor[2]:.2f}x"
        )


if __name__ == "__main__":
    app.run(main)
