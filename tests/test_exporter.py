"""VersionedExporter: versions on disk, retention, caching, async, bad input."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    ExportError,
    PendingExport,
    RetentionPolicy,
    VersionedExporter,
    layout,
    load_from_saved_model,
)

from conftest import classifier, classifier_data
from helpers import assert_close, serve_tf2

T0 = 1_700_000_000


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


def _dir_names(path) -> list[str]:
    return sorted(tf.io.gfile.listdir(str(path)))


def test_versions_strictly_increase_within_one_second(tmp_path):
    exporter = VersionedExporter(str(tmp_path), keep=None, clock=Clock())
    model = classifier()
    paths = [exporter.export(model) for _ in range(3)]
    assert exporter.versions() == [T0, T0 + 1, T0 + 2]
    assert paths == [str(tmp_path / str(v)) for v in exporter.versions()]


def test_versions_follow_the_clock_when_it_is_ahead(tmp_path):
    clock = Clock()
    exporter = VersionedExporter(str(tmp_path), keep=None, clock=clock)
    exporter.export(classifier())
    clock.now += 100
    exporter.export(classifier())
    assert exporter.versions() == [T0, T0 + 100]


def test_versions_continue_above_the_newest_across_restarts(tmp_path):
    model = classifier()
    VersionedExporter(str(tmp_path), keep=None, clock=Clock(T0 + 50)).export(model)
    restarted = VersionedExporter(str(tmp_path), keep=None, clock=Clock(T0))
    restarted.export(model)
    assert restarted.versions() == [T0 + 50, T0 + 51]


def test_export_info_is_written_with_every_version(tmp_path):
    exporter = VersionedExporter(str(tmp_path), clock=Clock())
    path = exporter.export(
        classifier(), epoch=3, step=40, metrics={"loss": 0.5, "bad": float("nan")}
    )
    info = json.loads(
        (tmp_path / str(T0) / "assets.extra/export_info.json").read_text()
    )
    assert path == str(tmp_path / str(T0))
    assert {k: info[k] for k in ("version", "epoch", "step", "metrics", "created")} == {
        "version": T0,
        "epoch": 3,
        "step": 40,
        "metrics": {"loss": 0.5, "bad": None},
        "created": T0,
    }
    assert set(info["library"]) == {"kerassave_callbacks", "tensorflow", "keras"}


def test_keep_n_deletes_only_old_version_directories(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "12abc").mkdir()
    (tmp_path / "tmp").mkdir()
    exporter = VersionedExporter(str(tmp_path), keep=2, grace_seconds=0, clock=Clock())
    model = classifier()
    for _ in range(5):
        exporter.export(model)
    assert exporter.versions() == [T0 + 3, T0 + 4]  # Retired at once ...
    exporter.wait()  # ... and deleted in the background.
    assert _dir_names(tmp_path) == sorted(
        ["12abc", "notes.txt", "tmp", str(T0 + 3), str(T0 + 4)]
    )


def test_keep_best_ranks_by_the_monitor_and_survives_a_restart(tmp_path):
    model = classifier()
    losses = [0.9, 0.2, 0.8, 0.1, 0.7, 0.6]
    policy = RetentionPolicy(keep=1, keep_best=2, grace_seconds=0)
    first = VersionedExporter(
        str(tmp_path), retention=policy, monitor="val_loss", clock=Clock()
    )
    for loss in losses[:3]:
        first.export(model, metrics={"val_loss": loss})
    # A restart: a new exporter reads the metrics back from disk.
    second = VersionedExporter(
        str(tmp_path), retention=policy, monitor="val_loss", clock=Clock()
    )
    for loss in losses[3:]:
        second.export(model, metrics={"val_loss": loss})
    # Best two: 0.1 (T0+3) and 0.2 (T0+1); newest: T0+5.
    assert second.versions() == [T0 + 1, T0 + 3, T0 + 5]


def test_keep_every_n_hours(tmp_path):
    clock = Clock()
    exporter = VersionedExporter(
        str(tmp_path), keep=1, keep_every_n_hours=1, grace_seconds=0, clock=clock
    )
    model = classifier()
    for _ in range(6):
        exporter.export(model)
        clock.now += 1800
    assert exporter.versions() == [T0, T0 + 3600, T0 + 7200, T0 + 9000]


def test_export_to_ram_filesystem_keeps_and_loads():
    base = "ram://exporter_ram/exports"
    exporter = VersionedExporter(base, keep=2, grace_seconds=0, clock=Clock())
    model = classifier()
    x, _ = classifier_data()
    for _ in range(3):
        path = exporter.export(model)
    assert exporter.versions() == [T0 + 1, T0 + 2]
    exporter.wait()
    assert sorted(tf.io.gfile.listdir(base)) == [str(T0 + 1), str(T0 + 2)]
    assert_close(serve_tf2(path, {"features": x})["logits"], model(x))


def test_each_export_holds_the_current_weights(tmp_path):
    x, y = classifier_data()
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=None, clock=Clock())
    first = exporter.export(model)
    graphs = exporter._cache.graphs
    model.fit(x, y, epochs=2, verbose=0)
    second = exporter.export(model)

    assert exporter._cache.graphs is graphs  # Traced once, reused.
    assert_close(serve_tf2(second, {"features": x})["logits"], model(x))
    assert not np.allclose(serve_tf2(first, {"features": x})["logits"], model(x))


def test_a_first_export_keeps_full_collections_off_the_old_heap(tmp_path):
    """Tracing and serializing run with the objects that were alive before
    them frozen (full collections would walk the whole training process);
    afterwards the collector is as it was, a process's own freeze too."""
    frozen_during = []

    def record(phase, info):
        if phase == "start":
            frozen_during.append(gc.get_freeze_count())

    x, _ = classifier_data()
    model = classifier()
    gc.callbacks.append(record)
    try:
        path = VersionedExporter(str(tmp_path / "a"), clock=Clock()).export(model)
    finally:
        gc.callbacks.remove(record)
    assert max(frozen_during) > 0
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    assert_close(serve_tf2(path, {"features": x})["logits"], model(x))

    # The first save of an async export runs in the writer thread.
    with VersionedExporter(str(tmp_path / "c"), async_export=True) as exporter:
        record = exporter.export(classifier()).result()
    assert gc.get_freeze_count() == 0
    assert exporter.versions() == [record.version]

    gc.freeze()  # A process that froze its objects itself (before a fork).
    try:
        VersionedExporter(str(tmp_path / "b"), clock=Clock()).export(classifier())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_recompiling_rebuilds_the_graphs(tmp_path):
    x, y = classifier_data()
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=None, clock=Clock())
    exporter.export(model)
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    path = exporter.export(model)
    y_onehot = np.eye(3, dtype="float32")[y]

    train = tf.saved_model.load(path, tags=["train"]).signatures["train"]
    out = train(features=tf.constant(x), logits_target=tf.constant(y_onehot))

    assert sorted(out) == ["loss", "metrics/mae/value", "predictions/logits"]
    mse = keras.losses.mean_squared_error(y_onehot, model(x)).numpy().mean()
    assert_close(out["loss"], mse)


def test_freezing_the_model_rebuilds_the_graphs(tmp_path):
    x, y = classifier_data()
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=None, clock=Clock())
    exporter.export(model)
    model.trainable = False
    path = exporter.export(model)
    train = tf.saved_model.load(path, tags=["train"]).signatures["train"]

    feeds = dict(features=tf.constant(x), logits_target=tf.constant(y))
    before = train(**feeds)["predictions/logits"]
    after = train(**feeds)["predictions/logits"]  # Predicted before its step.

    np.testing.assert_array_equal(after.numpy(), before.numpy())


def test_async_export_holds_the_weights_of_the_moment_it_was_called(tmp_path):
    x, y = classifier_data()
    model = classifier()
    exporter = VersionedExporter(str(tmp_path), keep=None, async_export=True)
    first = exporter.export(model)  # Traces now, writes in the background.
    expected = model.predict(x, verbose=0)
    path = exporter.export(model)
    model.fit(x, y, epochs=3, verbose=0)  # Training goes on meanwhile.
    exporter.wait()

    assert_close(serve_tf2(path, {"features": x})["logits"], expected)
    assert exporter.versions() == [first.result().version, path.result().version]


def test_the_first_async_export_writes_the_state_of_the_call_in_the_background(
    tmp_path,
):
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=1, verbose=0)
    exporter = VersionedExporter(str(tmp_path), keep=None, async_export=True)
    expected = model.predict(x, verbose=0)

    pending = exporter.export(model, step=1)
    assert isinstance(pending, PendingExport)  # Traced; saving goes on.
    model.fit(x, y, epochs=3, verbose=0)  # Trains while it is written.
    record = pending.result()
    exporter.close()

    assert_close(serve_tf2(record.path, {"features": x})["logits"], expected)
    loaded = load_from_saved_model(record.path)
    assert int(loaded.optimizer.iterations) == 1


def test_async_export_error_is_raised_by_wait_and_leaves_no_version(tmp_path):
    export_dir = tmp_path / "exports"
    exporter = VersionedExporter(str(export_dir), keep=None, async_export=True)
    model = classifier()
    exporter.export(model).result()
    # Permissions do not stop root: make export_dir a file instead.
    for name in os.listdir(export_dir):
        tf.io.gfile.rmtree(str(export_dir / name))
    export_dir.rmdir()
    export_dir.write_text("not a directory any more")

    exporter.export(model)
    with pytest.raises(ExportError, match="No version directory was left"):
        exporter.wait()


def test_cleanup_removes_only_abandoned_temporaries(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = layout.temp_name(T0)  # This process's, as an async export makes.
    names = {
        "live": live,
        "dead": live.replace(f"-{os.getpid()}-", f"-{dead.pid}-"),
        "other_host_old": f"temp-{T0 - 7200}-elsewhere-1-0123abcd",
        "other_host_recent": f"temp-{T0 - 60}-elsewhere-1-0123abcd",
        "user_dir": "temp-notes",
    }
    for name in names.values():
        (tmp_path / name).mkdir()

    VersionedExporter(str(tmp_path), clock=Clock())

    assert _dir_names(tmp_path) == sorted(
        [names["live"], names["other_host_recent"], names["user_dir"]]
    )


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"keep": True}, TypeError, "keep=True of type bool"),
        ({"keep": 1.5}, TypeError, "keep=1.5 of type float"),
        ({"keep": "3"}, TypeError, "keep='3' of type str"),
        ({"keep": 0}, ValueError, "keep=0. Expected an integer >= 1 (None keeps"),
        ({"keep": -3}, ValueError, "keep=-3."),
        ({"keep_best": 2}, ValueError, "needs `monitor`"),
        ({"keep_best": 0, "monitor": "loss"}, ValueError, "keep_best=0."),
        ({"mode": "best"}, ValueError, "mode='best'. Expected one of"),
        ({"keep_every_n_hours": 0}, ValueError, "keep_every_n_hours=0."),
        ({"keep_every_n_hours": "2"}, TypeError, "keep_every_n_hours='2'"),
    ],
    ids=lambda v: str(v) if not isinstance(v, type) else v.__name__,
)
def test_bad_arguments_are_refused_before_anything_is_written(
    kwargs, error, fragment, tmp_path
):
    target = tmp_path / "exports"
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        VersionedExporter(str(target), **kwargs)
    assert not target.exists()


def test_export_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match=f"export_dir='{target}' is an existing file"):
        VersionedExporter(str(target))
    assert target.read_text() == "x"


def test_export_dir_below_a_file_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot be created: .*file' is a file"):
        VersionedExporter(str(tmp_path / "file" / "exports"))


def _worker(*args, **kwargs):
    script = os.path.join(os.path.dirname(__file__), "export_worker.py")
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_two_processes_on_one_export_dir_never_share_a_version(tmp_path):
    workers = [_worker("loop", tmp_path, 6) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].split() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]

    paths = [p for out in outputs for p in out if p != "ready"]
    versions = VersionedExporter(str(tmp_path), keep=None).versions()
    assert len(set(paths)) == 12
    assert sorted(int(os.path.basename(p)) for p in paths) == versions


def test_a_write_that_fails_half_way_leaves_no_version(tmp_path):
    worker = _worker("fsize", tmp_path, 200_000)
    out, _ = worker.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])

    assert "No version directory was left" in result["error"]
    assert "File too large" in result["error"] or "too large" in result["error"].lower()
    assert len(VersionedExporter(str(tmp_path)).versions()) == 1
    assert [n for n in os.listdir(tmp_path) if n.startswith("temp-")] == []


def test_as_text_and_serving_only_pass_through_to_the_export(tmp_path):
    exporter = VersionedExporter(
        str(tmp_path), serving_only=True, as_text=True, clock=Clock()
    )
    model = classifier()
    path = exporter.export(model)
    x, _ = classifier_data()

    assert sorted(os.listdir(path)) == [
        "assets",
        "assets.extra",
        "saved_model.pbtxt",
        "variables",
    ]
    assert exporter.versions() == [T0]
    assert_close(serve_tf2(path, {"features": x})["logits"], model(x))
    with pytest.raises(ValueError, match="one MetaGraph with tags"):
        tf.saved_model.load(path, tags=["train"])


def test_input_signature_passes_through_for_an_unbuilt_model(tmp_path):
    exporter = VersionedExporter(
        str(tmp_path),
        input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")],
        clock=Clock(),
    )
    model = keras.Sequential([keras.layers.Dense(2, name="y")])
    path = exporter.export(model)
    ones = np.ones((1, 4), "float32")
    assert_close(serve_tf2(path, {"x": ones})["y"], model(ones))


def test_on_commit_reports_each_export(tmp_path):
    records = []
    exporter = VersionedExporter(
        str(tmp_path), keep=1, on_commit=records.append, grace_seconds=0, clock=Clock()
    )
    model = classifier()
    exporter.export(model, epoch=0)
    path = exporter.export(model, epoch=1)
    exporter.wait()

    on_disk = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
    assert [(r.version, r.removed, r.kept) for r in records] == [
        (T0, [], [T0]),
        (T0 + 1, [T0], [T0 + 1]),
    ]
    assert records[1].path == path
    assert records[1].size_bytes == on_disk
    assert records[1].info["epoch"] == 1
    assert records[1].duration_seconds > 0
