"""Export speed and memory, measured side by side in one run.

    python benchmarks/export_speed.py [--repeats=5]

Model: an MLP of 8 Dense(1024) layers on 256 inputs compiled with Adam
(about 7.6M parameters, about 90 MB with the Adam state). Prints each
measurement, then the ratios the exporter is held to:

- steady-state full export (train/eval/serve, without the publish gate)
  vs a raw write+fsync of the same variable bytes (target <= 1.3), back to
  back with keep=2 and
  grace_seconds=0, so that retention's background deletion of the oldest
  version overlaps the next export as it can in training (the median of
  the exports, after three untimed ones that bring retention into its
  cycle; each raw write also replaces the previous file, as a version
  replaces the oldest);
- for information, the same with the default grace period (10 s):
  superseded versions stay on disk while the timed exports run, so nothing
  is freed and each export writes disk blocks never used before. On the
  thin-provisioned virtual disks of our CI that costs up to 3x the write of
  reused blocks, for raw writes too (which blocks a raw write gets depends
  on what ran before it, so that row is noisy and has no target);
- the publish gate's cost: the steady full export above (gated, the
  default) vs the same with `validate=False` (target <= 1.5), and the
  async caller's blocking with the gate vs without (information: the
  gate's comparison runs the model on its rows in the caller's thread);
- steady-state serving_only export vs Keras' own model.export() (<= 0.4);
- time an async export() blocks its caller vs a sync full export (<= 0.15);
- peak extra memory of an async export while training goes on vs the
  variable bytes (<= 1.2).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from kerassave_callbacks import VersionedExporter  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed runs of each measurement.")


def build_model() -> keras.Model:
    layers = [keras.Input((256,), name="x")]
    layers += [keras.layers.Dense(1024, name=f"dense_{i}") for i in range(8)]
    model = keras.Sequential(layers, name="mlp")
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def variable_bytes(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in model.variables + model.optimizer.variables]


def _median_seconds(fn, repeats: int, between=lambda: None) -> float:
    """Median time of `fn`; `between` runs untimed after each call (as the
    training between two exports would)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        between()
    return statistics.median(times)


def raw_write_new(arrays, work: str, counter) -> None:
    """`raw_write` to a new file each time (the old ones stay)."""
    raw_write(arrays, os.path.join(work, f"raw_{next(counter)}"))


def raw_write(arrays, path: str) -> None:
    with open(path, "wb") as f:
        for array in arrays:
            f.write(array.tobytes())
        f.flush()
        os.fsync(f.fileno())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size in a thread; `peak` is the largest seen."""

    def __enter__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _train_steps(model, data, steps: int) -> None:
    x, y = data
    for _ in range(steps):
        model.train_on_batch(x, y)


def measure_memory(model, work: str, data) -> tuple[int, int]:
    """(peak extra RSS of training alone, of training with an async export)."""
    exporter = VersionedExporter(os.path.join(work, "mem"), keep=1, async_export=True)
    exporter.export(model)  # First export: trace and serialize.
    exporter.wait()
    _train_steps(model, data, 5)  # Warm up training's own buffers.
    base = _rss_bytes()
    with PeakRss() as alone:
        _train_steps(model, data, 5)
    train_only = alone.peak - base
    base = _rss_bytes()
    with PeakRss() as with_export:
        exporter.export(model)
        _train_steps(model, data, 5)
        exporter.wait()
    return train_only, with_export.peak - base


def _async_blocked(model, path: str, repeats: int, validate: bool) -> float:
    """Median time an async export() blocks its caller, after the first."""
    exporter = VersionedExporter(path, keep=2, async_export=True, validate=validate)
    exporter.export(model)
    exporter.wait()  # The first one traces; time the steady ones.
    blocked = []
    for _ in range(repeats):
        start = time.perf_counter()
        exporter.export(model)
        blocked.append(time.perf_counter() - start)
        exporter.wait()
    exporter.close()
    return statistics.median(blocked)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    repeats = _REPEATS.value
    model = build_model()
    arrays = variable_bytes(model)
    nbytes = sum(a.nbytes for a in arrays)
    params = model.count_params()
    print(f"model: {params / 1e6:.2f}M parameters, {nbytes / 2**20:.1f} MiB variables")
    data = (
        np.random.rand(32, 256).astype("float32"),
        np.random.rand(32, 1024).astype("float32"),
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as work:
        raw = _median_seconds(
            lambda: raw_write(arrays, os.path.join(work, "raw")), repeats
        )

        full = VersionedExporter(os.path.join(work, "full"), keep=2, grace_seconds=0)
        for _ in range(3):  # The first traces; retention starts at the third.
            full.export(model)
        full_s = _median_seconds(lambda: full.export(model), repeats)
        full.wait()

        ungated = VersionedExporter(
            os.path.join(work, "ungated"), keep=2, grace_seconds=0, validate=False
        )
        for _ in range(3):
            ungated.export(model)
        ungated_s = _median_seconds(lambda: ungated.export(model), repeats)
        ungated.close()

        files = iter(range(10**6))
        raw_kept = _median_seconds(lambda: raw_write_new(arrays, work, files), repeats)
        graced = VersionedExporter(os.path.join(work, "graced"), keep=2)
        for _ in range(3):
            graced.export(model)
        graced_s = _median_seconds(lambda: graced.export(model), repeats)
        graced.close()

        serving = VersionedExporter(
            os.path.join(work, "serve"), keep=2, serving_only=True
        )
        serving.export(model)
        serving_s = _median_seconds(
            lambda: serving.export(model), repeats, serving.wait
        )

        counter = iter(range(10**6))
        keras_s = _median_seconds(
            lambda: model.export(
                os.path.join(work, f"keras_{next(counter)}"), verbose=False
            ),
            max(2, repeats // 2),
        )

        async_s = _async_blocked(model, os.path.join(work, "async"), repeats, True)
        async_ungated_s = _async_blocked(
            model, os.path.join(work, "async_ungated"), repeats, False
        )

        train_only, with_export = measure_memory(model, work, data)

    extra = max(0, with_export - train_only)
    print(f"raw write+fsync of the variable bytes: {raw * 1e3:8.1f} ms")
    print(f"full export (train/eval/serve):        {full_s * 1e3:8.1f} ms")
    print(f"full export, no publish gate:          {ungated_s * 1e3:8.1f} ms")
    print(f"raw write+fsync, a new file each time: {raw_kept * 1e3:8.1f} ms")
    print(f"full export, default grace period:     {graced_s * 1e3:8.1f} ms")
    print(f"serving_only export:                   {serving_s * 1e3:8.1f} ms")
    print(f"keras model.export():                  {keras_s * 1e3:8.1f} ms")
    print(f"async export(), caller blocked:        {async_s * 1e3:8.1f} ms")
    print(f"  the same, no publish gate:           {async_ungated_s * 1e3:8.1f} ms")
    print(
        f"peak extra RSS: training {train_only / 2**20:.1f} MiB, training + async "
        f"export {with_export / 2**20:.1f} MiB"
    )
    rows = [
        ("ungated full export / raw write+fsync", ungated_s / raw, 1.3),
        ("full export, grace / raw write, new files", graced_s / raw_kept, None),
        ("gated full export / ungated", full_s / ungated_s, 1.5),
        ("async blocked, gated / ungated", async_s / async_ungated_s, None),
        ("serving_only export / model.export()", serving_s / keras_s, 0.4),
        ("async blocked / sync full export", async_s / full_s, 0.15),
        ("async extra memory / variable bytes", extra / nbytes, 1.2),
    ]
    print()
    for name, ratio, target in rows:
        if target is None:
            print(f"{name:42s} {ratio:6.3f}  (information)")
            continue
        verdict = "ok" if ratio <= target else "OVER TARGET"
        print(f"{name:42s} {ratio:6.3f}  (target <= {target})  {verdict}")


if __name__ == "__main__":
    app.run(main)
