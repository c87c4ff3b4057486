"""Safety of the export directory and of training (issue: nothing outside
export_dir is touched; on_error="warn" always holds; lifecycle)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading

import keras
import numpy as np
import pytest

from kerassave_callbacks import (
    ExportError,
    SavedModelExporter,
    VersionedExporter,
    export_saved_model,
    layout,
)

from conftest import classifier, classifier_data
from helpers import BreakExportDir, chattr, events, fit_classifier


def _tree(root) -> dict[str, bytes]:
    """Every file under `root` with its bytes (links not followed)."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _steps(acc, tag) -> list[int]:
    return [e.step for e in acc.Tensors(tag)] if tag in acc.Tags()["tensors"] else []


@pytest.fixture
def pinned(tmp_path):
    """A model outside export_dir (a SavedModel plus a user's file)."""
    outside = tmp_path / "pinned"
    export_saved_model(classifier(), str(outside))
    (outside / "NOTES.txt").write_text("mine")
    return outside


# 1. Nothing is deleted through a symbolic link.


def test_a_linked_version_and_its_target_survive_retention(tmp_path, pinned):
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    (export_dir / "1").symlink_to(pinned, target_is_directory=True)
    before = _tree(pinned)
    exporter = VersionedExporter(str(export_dir), keep=1, grace_seconds=0)
    model = classifier()
    for _ in range(4):
        exporter.export(model)
    exporter.close()

    assert _tree(pinned) == before
    assert os.path.islink(export_dir / "1")
    names = sorted(os.listdir(export_dir))
    assert not [n for n in names if n.startswith("temp-")]
    # The link is served and counted as a version, but not towards keep=1.
    versions = exporter.versions()
    assert len(versions) == 2 and versions[0] == 1


def test_a_version_a_link_points_to_is_pinned_too(tmp_path):
    export_dir = tmp_path / "exports"
    model = classifier()
    with VersionedExporter(str(export_dir), keep=2, grace_seconds=0) as exporter:
        first = int(os.path.basename(exporter.export(model)))
        (export_dir / "served").symlink_to(export_dir / str(first))
        later = [int(os.path.basename(exporter.export(model))) for _ in range(3)]

    assert exporter.versions() == [first, *later[-2:]]
    assert os.path.exists(export_dir / "served" / "saved_model.pb")


def test_a_version_linked_during_its_grace_period_stays(tmp_path):
    export_dir = tmp_path / "exports"
    model = classifier()
    with VersionedExporter(str(export_dir), keep=1, grace_seconds=2) as exporter:
        first = int(os.path.basename(exporter.export(model)))
        second = int(os.path.basename(exporter.export(model)))
        # Retention dropped `first`; the user pins it before its grace ends.
        (export_dir / "served").symlink_to(export_dir / str(first))

    assert exporter.versions() == [first, second]
    assert os.path.exists(export_dir / "served" / "saved_model.pb")


def test_a_link_inside_a_version_is_unlinked_not_followed(tmp_path, pinned):
    export_dir = tmp_path / "exports"
    exporter = VersionedExporter(str(export_dir), keep=1, grace_seconds=0)
    model = classifier()
    first = exporter.export(model)
    os.symlink(pinned, os.path.join(first, "assets", "linked"))
    before = _tree(pinned)
    exporter.export(model)
    exporter.close()

    assert not os.path.exists(first)
    assert _tree(pinned) == before


def test_cleanup_leaves_linked_temporaries_alone(tmp_path, pinned):
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = layout.temp_name(1_700_000_000)
    link = export_dir / live.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    link.symlink_to(pinned, target_is_directory=True)
    before = _tree(pinned)

    assert VersionedExporter(str(export_dir)).cleanup() == []
    assert os.path.islink(link) and _tree(pinned) == before


# 2. The empty path and file system roots are refused.


@pytest.mark.parametrize("export_dir", ["", "  ", "/", "//", "file:///", "ram://"])
@pytest.mark.parametrize("cls", [VersionedExporter, SavedModelExporter])
def test_empty_and_root_export_dirs_are_refused(cls, export_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is empty|is the root of a file system"):
        cls(export_dir, keep=1)
    assert os.listdir(tmp_path) == []


# 3-5. on_error="warn" keeps training, and records each failure at its step.


class NumpyInCall(keras.layers.Layer):
    """Works eagerly (run_eagerly=True), cannot be traced into a graph."""

    def call(self, x):
        return x * float(np.asarray(x.numpy()).size > 0)

    def compute_output_shape(self, input_shape):
        return input_shape


def test_warn_trains_through_a_model_that_cannot_be_traced(tmp_path, caplog):
    inputs = keras.Input((4,), name="features")
    outputs = keras.layers.Dense(3)(NumpyInCall(name="eager_only")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse", run_eagerly=True)
    x, _ = classifier_data()
    exporter = SavedModelExporter(
        str(tmp_path / "exports"), on_error="warn", log_dir=str(tmp_path / "logs")
    )
    with caplog.at_level(logging.WARNING):
        model.fit(x, x[:, :3], epochs=3, batch_size=8, verbose=0, callbacks=[exporter])

    assert int(model.optimizer.iterations) == 12
    assert "Could not build the graphs of model" in caplog.text
    assert "eager_only" in caplog.text  # The failing layer is named.
    acc = events(tmp_path / "logs" / "export")
    assert _steps(acc, "export/error") == [4, 8, 12, 12]  # Train end retries.
    assert exporter.versions() == []
    with pytest.raises(ExportError, match="Could not build the graphs"):
        raising = SavedModelExporter(str(tmp_path / "raise"))
        model.fit(x, x[:, :3], epochs=1, verbose=0, callbacks=[raising])


def test_warn_trains_through_a_retention_failure(tmp_path):
    export_dir = tmp_path / "exports"
    model = fit_classifier([SavedModelExporter(str(export_dir), keep=1)], epochs=1)
    (stuck,) = os.listdir(export_dir)
    if not chattr("+i", export_dir / stuck):
        pytest.skip("chattr +i is not permitted here")
    try:
        exporter = SavedModelExporter(
            str(export_dir),
            keep=1,
            grace_seconds=0,
            on_error="warn",
            log_dir=str(tmp_path / "logs"),
        )
        fit_classifier([exporter], epochs=3, initial_epoch=1, model=model)
    finally:
        chattr("-i", export_dir / stuck)

    assert int(model.optimizer.iterations) == 12
    acc = events(tmp_path / "logs" / "export")
    assert _steps(acc, "export/error") == [8, 12]
    assert _steps(acc, "export/event") == [8, 12]
    for event in acc.Tensors("export/error"):
        error = event.tensor_proto.string_val[0].decode()
        assert "was committed to" in error and "retention could not remove" in error
    newest = exporter.versions()[-1]
    assert exporter.versions() == [int(stuck), newest]  # Committed, not undone.


class BlockLogDir(keras.callbacks.Callback):
    """Makes `<log_dir>/export` a file until epoch `mend_at` begins."""

    def __init__(self, run_dir, mend_at):
        super().__init__()
        self.run_dir, self.mend_at = run_dir, mend_at
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.write_text("not a directory")

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.mend_at:
            self.run_dir.unlink()


def test_warn_trains_through_a_failing_tensorboard_writer(tmp_path, caplog):
    run_dir = tmp_path / "logs" / "export"
    exporter = SavedModelExporter(
        str(tmp_path / "exports"), on_error="warn", log_dir=str(tmp_path / "logs")
    )
    with caplog.at_level(logging.WARNING):
        model = fit_classifier([BlockLogDir(run_dir, mend_at=1), exporter], epochs=3)

    assert int(model.optimizer.iterations) == 12
    steps = [  # Every commit stood.
        json.loads(
            (
                tmp_path / "exports" / str(v) / "assets.extra" / "export_info.json"
            ).read_text()
        )["step"]
        for v in exporter.versions()
    ]
    assert steps == [4, 8, 12]
    assert "Could not write export/error to TensorBoard yet" in caplog.text
    acc = events(run_dir)  # Written late, at their own steps.
    assert _steps(acc, "export/event") == [4, 8, 12]
    assert _steps(acc, "export/error") == [4]


def test_raise_stops_fit_on_a_failure_after_the_commit(tmp_path):
    run_dir = tmp_path / "logs" / "export"
    exporter = SavedModelExporter(
        str(tmp_path / "exports"), log_dir=str(tmp_path / "logs")
    )
    with pytest.raises(ExportError, match="was committed to") as caught:
        fit_classifier([BlockLogDir(run_dir, mend_at=None), exporter], epochs=3)
    assert caught.value.committed == os.path.join(
        tmp_path / "exports", str(exporter.versions()[0])
    )


def test_a_failed_last_async_export_is_retried_at_train_end(tmp_path):
    export_dir = tmp_path / "exports"
    exporter = SavedModelExporter(
        str(export_dir), keep=None, async_export=True, on_error="warn"
    )
    breaker = BreakExportDir(
        export_dir, break_at=2, exporter=exporter, mend_at_end=True
    )
    model = fit_classifier([breaker, exporter], epochs=3)
    infos = []
    for version in exporter.versions():
        path = export_dir / str(version) / "assets.extra" / "export_info.json"
        infos.append(json.loads(path.read_text()))
    # The third epoch's async export failed (the break also removed the older
    # versions); the retry at train end committed it.
    assert [(i["epoch"], i["step"]) for i in infos] == [(3, 12)]
    assert int(model.optimizer.iterations) == 12


# 6. An async export returns what it commits.


def test_concurrent_async_exporters_return_only_what_they_committed(tmp_path):
    model = classifier()
    fixed = lambda: 1_700_000_000.0  # noqa: E731  Both pick the same numbers.
    exporters = [
        VersionedExporter(str(tmp_path), keep=None, async_export=True, clock=fixed)
        for _ in range(2)
    ]
    pending = []
    firsts = []
    for e in exporters:  # The first export of each traces its graphs.
        firsts.append(e.export(model, epoch=-1))
        firsts[-1].result()
    for round_ in range(4):
        for i, e in enumerate(exporters):
            pending.append((i, round_, e.export(model, epoch=round_, step=i)))
    for e in exporters:
        e.close()

    paths = set()
    for i, round_, p in pending:
        record = p.result()
        info = json.loads(
            (
                tmp_path / str(record.version) / "assets.extra" / "export_info.json"
            ).read_text()
        )
        assert (info["epoch"], info["step"]) == (round_, i)
        assert os.fspath(p) == record.path == str(tmp_path / str(record.version))
        paths.add(record.path)
    on_disk = VersionedExporter(str(tmp_path)).versions()
    first = {f.result().path for f in firsts}
    assert paths == {str(tmp_path / str(v)) for v in on_disk} - first
    assert len(paths) == 8  # One version each, none overwritten.


# 7. every_n_steps counts optimizer steps.


def test_every_n_steps_counts_steps_with_steps_per_execution(tmp_path):
    x, y = classifier_data()
    model = classifier()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=4,
    )
    exporter = SavedModelExporter(str(tmp_path), keep=None, every_n_steps=2)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[exporter])
    steps = []
    for version in exporter.versions():
        path = tmp_path / str(version) / "assets.extra" / "export_info.json"
        steps.append(json.loads(path.read_text())["step"])
    assert steps == [4, 8, 12, 16]  # Every batch hook covers 4 >= 2 steps.


# 8. close() and `with`.


def _new_threads(before) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("kerassave") and t not in before
    ]


def test_a_closed_exporter_stops_its_threads_and_refuses_to_export(tmp_path):
    model = classifier()
    before = set(threading.enumerate())
    with VersionedExporter(
        str(tmp_path), keep=1, grace_seconds=0, async_export=True
    ) as exporter:
        for _ in range(3):
            pending = exporter.export(model)
        # The async writer, and the deleter of the two versions keep=1 dropped.
        running = {name.rsplit("_", 1)[0] for name in _new_threads(before)}
        assert running == {"kerassave-export", "kerassave-delete"}
    assert pending.done() and len(exporter.versions()) == 1
    assert _new_threads(before) == []
    with pytest.raises(RuntimeError, match="is closed. Make a new one"):
        exporter.export(model)


def test_a_closed_callback_refuses_anotherfit_classifier(tmp_path):
    before = set(threading.enumerate())
    with SavedModelExporter(
        str(tmp_path), keep=1, grace_seconds=0, async_export=True
    ) as callback:
        model = fit_classifier([callback], epochs=2)
    assert _new_threads(before) == []
    with pytest.raises(RuntimeError, match="SavedModelExporter of .* is closed"):
        fit_classifier([callback], epochs=1, model=model)


# 9. Messages name what None means for that argument.


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: SavedModelExporter(d, every_n_steps=0), "turns step exports off"),
        (lambda d: VersionedExporter(d, keep_best=0, monitor="x"), "keeps no best"),
    ],
)
def test_each_count_error_says_what_none_means_for_it(make, fragment, tmp_path):
    with pytest.raises(ValueError, match=fragment) as caught:
        make(str(tmp_path / "exports"))
    assert "keeps every version" not in str(caught.value)
