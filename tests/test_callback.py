"""SavedModelExporter in model.fit: when it exports, what it keeps, events."""

from __future__ import annotations

import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import ExportError, SavedModelExporter, load_from_saved_model

from conftest import classifier, classifier_data
from helpers import (
    BreakExportDir,
    assert_close,
    chattr,
    events,
    fit_classifier,
    run_python,
    serve_tf2,
)


class Scripted(keras.callbacks.Callback):
    """Puts scripted values into the epoch logs (before the exporter runs)."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


def _infos(export_dir) -> list[dict]:
    infos = []
    for name in sorted(os.listdir(export_dir)):
        path = os.path.join(export_dir, name, "assets.extra", "export_info.json")
        with open(path) as f:
            infos.append(json.load(f))
    return infos


def test_keeps_the_newest_n_after_more_epochs_with_epoch_and_step(tmp_path):
    exporter = SavedModelExporter(str(tmp_path), keep=2)
    model = fit_classifier([exporter], epochs=5)
    infos = _infos(tmp_path)
    assert exporter.versions() == [i["version"] for i in infos]
    assert [(i["epoch"], i["step"]) for i in infos] == [(4, 16), (5, 20)]
    assert set(infos[-1]["metrics"]) == {"loss", "accuracy"}
    x, _ = classifier_data()
    latest = os.path.join(tmp_path, str(infos[-1]["version"]))
    assert_close(serve_tf2(latest, {"features": x})["logits"], model(x))


def test_tf_data_with_validation_data_records_validation_metrics(tmp_path):
    x, y = classifier_data()
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).batch(8)
    model = classifier()
    model.fit(
        train,
        validation_data=val,
        epochs=2,
        verbose=0,
        callbacks=[SavedModelExporter(str(tmp_path), monitor="val_loss")],
    )
    infos = _infos(tmp_path)
    assert [i["epoch"] for i in infos] == [1, 2]
    assert infos[1]["metrics"]["val_loss"] == pytest.approx(
        model.evaluate(val, verbose=0, return_dict=True)["loss"], rel=1e-5
    )


def test_keep_best_by_a_scripted_metric(tmp_path):
    scores = [0.5, 0.9, 0.1, 0.7, 0.8, 0.6]
    callbacks = [
        Scripted("score", scores),
        SavedModelExporter(
            str(tmp_path),
            keep=1,
            keep_best=2,
            monitor="score",
            mode="max",
            grace_seconds=0,
        ),
    ]
    fit_classifier(callbacks, epochs=6)
    assert [i["epoch"] for i in _infos(tmp_path)] == [2, 5, 6]


def test_save_best_only_exports_only_improvements(tmp_path):
    losses = [0.5, 0.7, 0.3, 0.4, 0.2]
    callbacks = [
        Scripted("my_loss", losses),
        SavedModelExporter(
            str(tmp_path), keep=None, monitor="my_loss", save_best_only=True
        ),
    ]
    fit_classifier(callbacks, epochs=5)
    assert [i["epoch"] for i in _infos(tmp_path)] == [1, 3, 5]


def test_save_best_only_remembers_the_best_across_fits(tmp_path):
    def run(values):
        exporter = SavedModelExporter(
            str(tmp_path), keep=None, monitor="my_loss", save_best_only=True
        )
        fit_classifier([Scripted("my_loss", values), exporter], epochs=len(values))

    run([0.3])
    run([0.4, 0.2])
    assert [i["metrics"]["my_loss"] for i in _infos(tmp_path)] == [0.3, 0.2]


def test_every_n_epochs_and_a_final_export_at_train_end(tmp_path):
    fit_classifier(
        [SavedModelExporter(str(tmp_path), keep=None, every_n_epochs=2)], epochs=5
    )
    assert [i["epoch"] for i in _infos(tmp_path)] == [2, 4, 5]


def test_no_second_export_when_the_last_epoch_was_exported(tmp_path):
    fit_classifier([SavedModelExporter(str(tmp_path), keep=None)], epochs=2)
    assert [i["step"] for i in _infos(tmp_path)] == [4, 8]


def test_export_on_train_end_can_be_turned_off(tmp_path):
    exporter = SavedModelExporter(
        str(tmp_path / "exports"), every_n_epochs=3, export_on_train_end=False
    )
    fit_classifier([exporter], epochs=2)
    assert not (tmp_path / "exports").exists()


def test_every_n_steps_exports_mid_epoch_without_duplicates(tmp_path):
    exporter = SavedModelExporter(str(tmp_path), keep=None, every_n_steps=3)
    fit_classifier([exporter], epochs=2)  # 4 batches an epoch.
    assert [(i["epoch"], i["step"]) for i in _infos(tmp_path)] == [
        (0, 3),  # Epochs completed: none yet.
        (1, 4),
        (1, 6),
        (2, 8),
    ]


def test_no_batch_hook_unless_every_n_steps(tmp_path):
    assert "on_train_batch_end" not in vars(SavedModelExporter(str(tmp_path)))
    with_steps = SavedModelExporter(str(tmp_path), every_n_steps=2)
    assert "on_train_batch_end" in vars(with_steps)


def test_missing_monitor_warns_once_naming_the_keys(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        fit_classifier([SavedModelExporter(str(tmp_path), monitor="val_acc")], epochs=3)
    warnings = [r.getMessage() for r in caplog.records if "val_acc" in r.getMessage()]
    assert len(warnings) == 1
    assert "['accuracy', 'loss']" in warnings[0]
    assert len(os.listdir(tmp_path)) == 3  # Exports go on without the metric.


def test_events_record_each_export_at_the_optimizer_step(tmp_path):
    export_dir = tmp_path / "exports"
    exporter = SavedModelExporter(
        str(export_dir),
        keep=1,
        grace_seconds=0,
        log_dir=str(tmp_path / "logs"),
        monitor="loss",
    )
    fit_classifier([exporter], epochs=3)
    acc = events(tmp_path / "logs" / "export")

    assert sorted(acc.Tags()["tensors"]) == [
        "export/duration_seconds",
        "export/event",
        "export/record",
        "export/size_bytes",
        "export/versions_kept",
    ]  # No export/version: float32 cannot hold one; the text names it.
    assert [e.step for e in acc.Tensors("export/event")] == [4, 8, 12]
    (version,) = (int(n) for n in os.listdir(export_dir))
    sizes = [tf.make_ndarray(e.tensor_proto) for e in acc.Tensors("export/size_bytes")]
    assert all(size.dtype == np.float32 and size > 1000 for size in sizes)
    assert [
        tf.make_ndarray(e.tensor_proto) for e in acc.Tensors("export/versions_kept")
    ] == [1, 1, 1]
    text = tf.make_ndarray(acc.Tensors("export/event")[-1].tensor_proto).item().decode()
    assert f"Exported version {version} to {export_dir / str(version)}" in text
    loss = json.loads(
        (export_dir / str(version) / "assets.extra" / "export_info.json").read_text()
    )["metrics"]["loss"]
    assert f"epoch 3; loss={loss:.4g};" in text and "removed versions [" in text


def test_no_event_file_before_the_first_export(tmp_path):
    exporter = SavedModelExporter(
        str(tmp_path / "exports"),
        every_n_epochs=5,
        export_on_train_end=False,
        log_dir=str(tmp_path / "logs"),
    )
    model = fit_classifier([exporter], epochs=2)
    assert not (tmp_path / "logs").exists()
    # The fifth epoch exports: now the writer is made, and writes its event.
    fit_classifier([exporter], epochs=5, initial_epoch=2, model=model)
    acc = events(tmp_path / "logs" / "export")
    assert [e.step for e in acc.Tensors("export/event")] == [20]


def test_events_beside_keras_tensorboard_in_one_log_dir(tmp_path):
    logs = tmp_path / "logs"
    callbacks = [
        keras.callbacks.TensorBoard(str(logs)),
        SavedModelExporter(str(tmp_path / "exports"), log_dir=str(logs)),
    ]
    fit_classifier(callbacks, epochs=2)
    assert sorted(os.listdir(logs)) == ["export", "train"]
    assert len(events(logs / "export").Tensors("export/event")) == 2
    assert "epoch_loss" in events(logs / "train").Tags()["tensors"]


def test_on_error_raise_stops_fit_with_a_clear_error(tmp_path):
    export_dir = tmp_path / "exports"
    callbacks = [BreakExportDir(export_dir), SavedModelExporter(str(export_dir))]
    with pytest.raises(ExportError, match="No version directory was left"):
        fit_classifier(callbacks, epochs=3)


def test_on_error_warn_logs_records_and_trains_on(tmp_path, caplog):
    export_dir = tmp_path / "exports"
    exporter = SavedModelExporter(
        str(export_dir), on_error="warn", log_dir=str(tmp_path / "logs")
    )
    with caplog.at_level(logging.WARNING):
        model = fit_classifier([BreakExportDir(export_dir), exporter], epochs=3)

    assert int(model.optimizer.iterations) == 12  # All three epochs ran.
    assert "Export failed; training goes on" in caplog.text
    acc = events(tmp_path / "logs" / "export")
    assert [e.step for e in acc.Tensors("export/error")] == [8, 12, 12]
    assert [e.step for e in acc.Tensors("export/event")] == [4]


def test_async_failure_with_warn_does_not_skip_the_next_export(tmp_path, caplog):
    export_dir = tmp_path / "exports"
    exporter = SavedModelExporter(
        str(export_dir),
        keep=None,
        async_export=True,
        on_error="warn",
        export_on_train_end=False,
        log_dir=str(tmp_path / "logs"),
    )
    with caplog.at_level(logging.WARNING):
        breaker = BreakExportDir(export_dir, mend_at=2, exporter=exporter)
        fit_classifier([breaker, exporter], epochs=3)

    assert caplog.text.count("Export failed; training goes on") == 1
    assert [i["epoch"] for i in _infos(export_dir)] == [3]
    # Recorded at its own step (8), not at the next export's (12).
    acc = events(tmp_path / "logs" / "export")
    assert [e.step for e in acc.Tensors("export/error")] == [8]
    assert [e.step for e in acc.Tensors("export/event")] == [4, 12]


def test_async_export_in_fit_commits_every_version(tmp_path):
    model = fit_classifier(
        [SavedModelExporter(str(tmp_path), keep=None, async_export=True)]
    )
    infos = _infos(tmp_path)
    assert [i["epoch"] for i in infos] == [1, 2, 3]
    x, _ = classifier_data()
    latest = os.path.join(tmp_path, str(infos[-1]["version"]))
    assert_close(serve_tf2(latest, {"features": x})["logits"], model(x))


def test_resume_continues_versions_and_retention_beside_backup_and_restore(tmp_path):
    export_dir = str(tmp_path / "exports")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = fit_classifier(
        [backup, SavedModelExporter(export_dir, keep=2, grace_seconds=0)], epochs=3
    )
    first = sorted(os.listdir(export_dir))
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    fit_classifier(
        [backup, SavedModelExporter(export_dir, keep=2, grace_seconds=0)],
        epochs=5,
        model=model,
    )
    second = sorted(os.listdir(export_dir))

    assert len(first) == len(second) == 2
    assert min(int(v) for v in second) > max(int(v) for v in first)
    assert [i["epoch"] for i in _infos(export_dir)] == [4, 5]


def test_verbose_prints_one_line_per_export_after_keras_epoch_line(tmp_path, capsys):
    exporter = SavedModelExporter(
        str(tmp_path), keep=1, grace_seconds=0, monitor="loss", verbose=1
    )
    x, y = classifier_data()
    classifier().fit(x, y, epochs=2, batch_size=8, verbose=2, callbacks=[exporter])
    out = capsys.readouterr().out.splitlines()

    first, second = [i for i, line in enumerate(out) if "exported version" in line]
    # Each comes after Keras' lines for its epoch, and names the epoch (as
    # Keras counts it), the monitored value and what retention removed.
    assert out[first - 2] == "Epoch 1/2"
    assert out[first - 1].startswith("4/4 - ")
    assert out[second - 2] == "Epoch 2/2" and out[second - 1].startswith("4/4 - ")
    v1, v2 = (int(out[i].split()[4]) for i in (first, second))
    assert out[first].startswith(f"Epoch 1: exported version {v1} to ")
    assert "; loss=" in out[first] and "removed" not in out[first]
    assert out[second].startswith(f"Epoch 2: exported version {v2} to ")
    assert out[second].endswith(f"; removed {v1}")


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs=0"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs=1.5"),
        ({"every_n_steps": -2}, ValueError, "every_n_steps=-2"),
        ({"mode": "best"}, ValueError, "mode='best'"),
        ({"save_best_only": True}, ValueError, "`save_best_only=True` needs `monitor`"),
        ({"keep_best": 1}, ValueError, "`keep_best=1` needs `monitor`"),
        ({"keep": 0}, ValueError, "keep=0"),
        ({"on_error": "ignore"}, ValueError, "on_error='ignore'"),
        ({"verbose": 2}, ValueError, "verbose=2"),
    ],
    ids=lambda v: str(v) if not isinstance(v, type) else v.__name__,
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, fragment, tmp_path):
    with pytest.raises(error, match=fragment.replace("[", r"\[")):
        SavedModelExporter(str(tmp_path / "exports"), **kwargs)
    assert not (tmp_path / "exports").exists()


MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from kerassave_callbacks import SavedModelExporter, load_from_saved_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
x = np.random.rand(32, 4).astype("float32")
y = np.random.rand(32, 3).astype("float32")
model.fit(x, y, epochs=2, batch_size=8, verbose=0,
          callbacks=[SavedModelExporter(sys.argv[1], keep=None)])
versions = sorted(int(v) for v in tf.io.gfile.listdir(sys.argv[1]))
path = f"{sys.argv[1]}/{versions[-1]}"
served = tf.saved_model.load(path, tags=["serve"]).signatures["serving_default"]
(served_y,) = served(x=tf.constant(x)).values()
expected = model.predict(x, verbose=0)
loaded_y = load_from_saved_model(path).predict(x, verbose=0)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "versions": len(versions),
    "serve_error": float(np.abs(served_y.numpy() - expected).max()),
    "loader_error": float(np.abs(loaded_y - expected).max()),
}))
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    result = json.loads(run_python(MIRRORED, tmp_path / "exports"))
    assert result["replicas"] == 2
    assert result["versions"] == 2
    assert result["serve_error"] < 1e-5
    assert result["loader_error"] < 1e-5


class FreezeDir(keras.callbacks.Callback):
    """Makes `path` immutable (nothing can be created in it) during the
    epochs in `frozen`: their exports fail, the versions on disk stay. It is
    thawed at the start of any other epoch and when training ends."""

    def __init__(self, path, frozen):
        super().__init__()
        self.path, self.frozen = path, frozen

    def on_epoch_begin(self, epoch, logs=None):
        chattr("+i" if epoch in self.frozen else "-i", self.path)

    def on_train_end(self, logs=None):
        chattr("-i", self.path)


@pytest.fixture
def freezable(tmp_path):
    path = tmp_path / "exports"
    path.mkdir()
    if not chattr("+i", path) or not chattr("-i", path):
        pytest.skip("chattr +i is not permitted here")
    return path


@pytest.mark.parametrize(
    "scores, frozen, on_disk",
    [
        # The 0.5 export fails: 0.7 still beats everything on disk.
        ([1.0, 0.5, 0.7], {1}, [1.0, 0.7]),
        # The last, improving export fails: train end tries it again.
        ([1.0, 0.5], {1}, [1.0, 0.5]),
    ],
    ids=["next_epoch_end", "train_end"],
)
def test_save_best_only_moves_the_best_only_when_an_export_commits(
    freezable, scores, frozen, on_disk
):
    exporter = SavedModelExporter(
        str(freezable),
        keep=None,
        monitor="my_loss",
        save_best_only=True,
        on_error="warn",
    )
    callbacks = [Scripted("my_loss", scores), FreezeDir(freezable, frozen), exporter]
    fit_classifier(callbacks, epochs=len(scores))
    assert [i["metrics"]["my_loss"] for i in _infos(freezable)] == on_disk


def test_a_step_export_at_an_epoch_end_leaves_a_version_with_its_metrics(tmp_path):
    # 3 steps an epoch: step exports at steps 2, 4, 6; epochs end at 3 and 6,
    # where a step export was taken before the epoch's metrics were known.
    exporter = SavedModelExporter(
        str(tmp_path), keep=None, every_n_steps=2, monitor="val_loss"
    )
    fit_classifier([exporter], epochs=2, validation_split=0.25)
    infos = _infos(tmp_path)

    # One version per state: the epoch's metrics went into the step export.
    assert [i["step"] for i in infos] == [2, 3, 4, 6]
    with_val = [i["step"] for i in infos if "val_loss" in i["metrics"]]
    assert with_val == [3, 6]


def test_a_versions_epoch_is_where_training_resumes(tmp_path):
    fit_classifier([SavedModelExporter(str(tmp_path), keep=None)], epochs=2)
    newest = _infos(tmp_path)[-1]
    model = load_from_saved_model(str(tmp_path / str(newest["version"])))
    fit_classifier(
        [SavedModelExporter(str(tmp_path), keep=None)],
        epochs=4,
        initial_epoch=newest["epoch"],
        model=model,
    )
    infos = _infos(tmp_path)
    assert [i["epoch"] for i in infos] == [1, 2, 3, 4]
    assert [i["step"] for i in infos] == [4, 8, 12, 16]  # The Adam step too.


def test_verbose_says_when_the_monitor_did_not_improve(tmp_path, capsys):
    exporter = SavedModelExporter(
        str(tmp_path), monitor="my_loss", save_best_only=True, verbose=1
    )
    x, y = classifier_data()
    callbacks = [Scripted("my_loss", [0.5, 0.7]), exporter]
    classifier().fit(x, y, epochs=2, batch_size=8, verbose=2, callbacks=callbacks)
    out = capsys.readouterr().out.splitlines()

    said = out.index("Epoch 2: my_loss did not improve from 0.5; no export.")
    assert out[said - 2] == "Epoch 2/2" and out[said - 1].startswith("4/4 - ")
