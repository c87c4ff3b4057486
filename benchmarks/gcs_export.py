"""Export to `gs://` against a raw upload of the same bytes, side by side in
one run, through TensorFlow's own GCS file system and the GCS emulator of
the tests (tests/gcs_namespace.sh; needs root for its network namespace).

    python benchmarks/gcs_export.py [--repeats=5]

Model: an MLP of 4 Dense(512) layers on 256 inputs compiled with Adam
(about 0.9M parameters, 10.6 MiB of variables with the Adam state). Prints
the medians of the steady exports (graphs cached; `keep=2`,
`grace_seconds=0`, so retention deletes one version each time) with and
without the publish gate, of a raw upload of the same files (each of the
version's files written once with `tf.io.gfile`, to a new directory), and
the ratios. On an object store an export writes the staged tree, then
moves it object by object to its version (graph file last: TF's GCS
rename rewrites each object server-side, then deletes the staged one);
the raw upload writes each file once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
_INSIDE = "KERASSAVE_BENCHMARK_IN_GCS_NAMESPACE"


def _run_inside() -> int:
    """Runs this script again inside the emulator's namespace."""
    work = tempfile.mkdtemp(prefix="kerassave-gcs-bench-")
    env = {**os.environ, _INSIDE: "1"}
    command = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child"]
    command += ["--mount-proc", os.path.join(TESTS, "gcs_namespace.sh"), work]
    script = os.path.abspath(sys.argv[0])
    return subprocess.call([*command, sys.executable, script, *sys.argv[1:]], env=env)


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int) -> None:
    import keras
    import tensorflow as tf

    from kerassave_callbacks import VersionedExporter

    layers = [keras.Input((256,), name="x")]
    layers += [keras.layers.Dense(512, name=f"dense_{i}") for i in range(4)]
    model = keras.Sequential(layers, name="mlp")
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)

    gated = VersionedExporter("gs://bucket/gated", keep=2, grace_seconds=0)
    ungated = VersionedExporter(
        "gs://bucket/ungated", keep=2, grace_seconds=0, validate=False
    )
    for exporter in (gated, ungated):
        exporter.export(model)  # The first export traces; not timed.
    version = f"gs://bucket/gated/{gated.versions()[-1]}"
    files = {
        os.path.relpath(os.path.join(d, f), version): None
        for d, _, names in tf.io.gfile.walk(version)
        for f in names
    }
    for rel in files:
        with tf.io.gfile.GFile(f"{version}/{rel}", "rb") as f:
            files[rel] = f.read()
    uploads = iter(range(10**6))

    def raw_upload():
        where = f"gs://bucket/raw/{next(uploads)}"
        for rel, data in files.items():
            with tf.io.gfile.GFile(f"{where}/{rel}", "wb") as f:
                f.write(data)

    raw = _median(raw_upload, repeats)
    full = _median(lambda: gated.export(model), repeats)
    plain = _median(lambda: ungated.export(model), repeats)
    size = sum(len(d) for d in files.values()) / 2**20
    print(f"a version: {len(files)} files, {size:.1f} MiB")
    print(f"raw upload of the same files:       {raw * 1e3:8.1f} ms")
    print(f"full export to gs:// (gated):       {full * 1e3:8.1f} ms")
    print(f"full export to gs://, no gate:      {plain * 1e3:8.1f} ms")
    print()
    print(f"ungated export / raw upload          {plain / raw:6.2f}  (information)")
    print(f"gated export / raw upload            {full / raw:6.2f}  (information)")


if __name__ == "__main__":
    repeats = next(
        (int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--repeats=")),
        5,
    )
    if os.environ.get(_INSIDE):
        main(repeats)
    else:
        sys.exit(_run_inside())
