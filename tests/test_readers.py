"""Readers that survive what they find on disk: damaged export infos and
dashboard records, versions retired while they are listed, temporaries of
dead or reused PIDs, a loader that imports no module the export names, and
`kerassave prune` applying the exporter's retention."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    RetentionPolicy,
    SavedModelExporter,
    VersionedExporter,
    events,
    export_saved_model,
    layout,
)
from kerassave_callbacks.export_dir import ExportDir

from conftest import classifier, classifier_data
from helpers import get_json, tensorboard_server

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_700_000_000.0  # In the past: grace periods are over.


def kerassave(*args):
    return subprocess.run(
        [sys.executable, "-m", "kerassave_callbacks", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Four versions of a trained classifier, created 0, 0.5, 1.1 and 1.2
    hours after T0, with a `loss` each: (export_dir, versions)."""
    root = tmp_path_factory.mktemp("readers") / "exports"
    model = classifier()
    x, y = classifier_data()
    model.fit(x, y, epochs=1, verbose=0)
    now = [T0]
    exporter = VersionedExporter(
        str(root), keep=None, validate=False, clock=lambda: now[0]
    )
    with exporter:
        for epoch, (hours, loss) in enumerate(
            [(0, 0.9), (0.5, 0.3), (1.1, 0.5), (1.2, 0.7)]
        ):
            now[0] = T0 + hours * 3600
            exporter.export(model, epoch=epoch, metrics={"loss": loss})
    return root, exporter.versions()


def _copy(versions, tmp_path):
    root, found = versions
    target = tmp_path / "exports"
    shutil.copytree(root, target)
    return target, found


def _damage(version_dir, **fields):
    path = version_dir / layout.EXPORT_INFO
    info = json.loads(path.read_text())
    info.update(fields)
    path.write_text(json.dumps(info))


# 1. Wrongly typed fields of export_info.json.


def test_wrongly_typed_export_info_fields_read_as_missing_everywhere(
    versions, tmp_path
):
    export_dir, found = _copy(versions, tmp_path)
    _damage(export_dir / str(found[0]), metrics="0.1", created=1e300, epoch="3")
    _damage(export_dir / str(found[1]), metrics=[0.2], step=-4, tags="serve")

    listing = kerassave("list", export_dir, "--monitor", "loss")
    rows = kerassave("list", export_dir, "--json")
    prune = kerassave(
        "prune", export_dir, "--keep", "1", "--keep_best", "1", "--monitor", "loss"
    )
    for out in (listing, rows, prune):
        assert out.returncode == 0, out.stderr[-2000:]
    first, second, third = json.loads(rows.stdout)[:3]
    assert (first["metrics"], first["created"], first["epoch"]) == ({}, None, None)
    assert (second["metrics"], second["step"]) == ({}, None)
    assert sorted(second["tags"]) == sorted(third["tags"])  # Read from the graph.
    info_path = str(export_dir / str(found[0]) / layout.EXPORT_INFO)
    assert f"{info_path}: field 'created' is 1e+300" in rows.stderr
    assert "field 'epoch' is '3', not an integer >= 0" in rows.stderr
    # The newest, and the best loss left (found[2]'s 0.5: the 0.3 of
    # found[1] is unreadable now).
    assert ExportDir(str(export_dir)).versions() == found[2:]


def test_verify_names_each_wrongly_typed_field(versions, tmp_path):
    export_dir, found = _copy(versions, tmp_path)
    _damage(export_dir / str(found[0]), created=1e300, epoch="3")
    out = kerassave("verify", export_dir / str(found[0]), "--json")
    (row,) = json.loads(out.stdout)
    assert out.returncode == 1 and not row["ok"]
    assert row["problems"] == [
        f"{layout.EXPORT_INFO}: field 'epoch' is '3', not an integer >= 0",
        f"{layout.EXPORT_INFO}: field 'created' is 1e+300, not a unix time "
        "between 0 and 253402300799",
    ]


def test_training_with_warn_survives_damaged_infos_in_retention(versions, tmp_path):
    export_dir, found = _copy(versions, tmp_path)
    _damage(export_dir / str(found[0]), metrics="oops", created="yesterday")
    _damage(export_dir / str(found[1]), metrics={"loss": "low"}, epoch=[1])
    exporter = SavedModelExporter(
        str(export_dir),
        keep=1,
        keep_best=1,
        monitor="loss",
        grace_seconds=0,
        on_error="warn",
        validate=False,
    )
    x, y = classifier_data()
    classifier().fit(x, y, epochs=2, verbose=0, callbacks=[exporter])

    kept = exporter.versions()
    # The newest, and the best readable loss (found[2]'s 0.5: the fresh
    # ones' are about 1.1).
    assert kept == [found[2], kept[-1]] and kept[-1] > found[-1]


# 2. Dashboard records with missing or wrongly typed fields.


def _write_records(run_dir, records):
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        for step, record in enumerate(records, start=1):
            tf.summary.write(
                events.RECORD,
                tf.constant(json.dumps(record)),
                step=step,
                metadata=events._RECORD_META,
            )
    writer.close()


def _enabled(base) -> bool:
    return get_json(f"{base}/data/plugins_listing")["kerassave_exports"]["enabled"]


def test_bad_dashboard_records_are_rows_that_hide_no_valid_one(tmp_path):
    good = {"status": "committed", "version": 1800000000, "created": T0}
    _write_records(
        tmp_path / "logs" / "export",
        [
            good,
            {"status": "committed", "created": T0},  # No version.
            {"status": "committed", "version": 1800000100, "removed": 1800000000},
            {"version": 1800000200, "metrics": "0.5", "created": 1e300, "epoch": "2"},
            {"status": "rejected", "error": ["not", "a", "string"]},
        ],
    )
    url = "data/plugin/kerassave_exports/exports?run=export"
    with tensorboard_server(tmp_path / "logs", _enabled) as base:
        rows = get_json(f"{base}/{url}")

    assert [r["status"] for r in rows] == [
        "on disk",
        "failed",
        "on disk",
        "on disk",
        "rejected",
    ]
    assert rows[0]["version"] == 1800000000 and rows[0]["created"] == T0
    assert "names no version" in rows[1]["error"]
    assert rows[2]["removed"] is None
    assert (rows[3]["metrics"], rows[3]["created"], rows[3]["epoch"]) == (None,) * 3
    assert rows[3]["serving"] and rows[4]["error"] is None


# 3. Versions retired while they are listed.


def test_listing_skips_versions_retired_while_it_reads_them(versions, tmp_path):
    export_dir, found = _copy(versions, tmp_path)
    # Many versions of many files: the window between reading a version's
    # file names and their sizes is wide.
    many = export_dir / str(found[-1]) / "assets" / "many"
    many.mkdir()
    for i in range(300):
        (many / f"f{i}").write_bytes(b"x")
    template = export_dir / str(found[-1])
    names = [str(found[-1] + 10 + i) for i in range(24)]
    for name in names:
        shutil.copytree(template, export_dir / name)
    # Another process retires them one by one, as retention does.
    retirer = subprocess.Popen(
        [sys.executable, "-c", RETIRE, str(export_dir), *names],
        stdout=subprocess.PIPE,
        text=True,
    )
    listings = []
    try:
        assert retirer.stdout.readline().strip() == "ready"
        while retirer.poll() is None:
            listings.append([v.version for v in ExportDir(str(export_dir)).describe()])
    finally:
        retirer.wait(timeout=120)
    assert retirer.returncode == 0
    assert len(listings) >= 2
    assert all(set(found) <= set(rows) for rows in listings)
    # At the end only the four are left, and the listing says so.
    assert [v.version for v in ExportDir(str(export_dir)).describe()] == found


RETIRE = """
import sys, time
from kerassave_callbacks import _files
root, names = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
for name in names:
    time.sleep(0.05)
    doomed = _files.retire_version(f"{root}/{name}", time.time())
    _files.remove_tree(doomed)
"""


# 4. A PID used again by another process (PID 1 of every container).


def _unshare_works() -> bool:
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


REUSED_PID = """
import os, sys, time
from kerassave_callbacks import _files
export_dir = sys.argv[1]
pid = os.fork()
if pid == 0:  # The writer: stages a version, then dies with it half-written.
    staged = _files.Staging(export_dir, time.time())
    os.makedirs(os.path.join(staged.path, "variables"))
    os.kill(os.getpid(), 9)
os.waitpid(pid, 0)
time.sleep(0.05)  # At least one clock tick: the next process starts later.
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(pid - 1))  # The next process gets the dead writer's PID.
child = os.fork()
if child == 0:  # The cleaner, with the dead writer's PID.
    assert os.getpid() == pid, (os.getpid(), pid)
    command = [sys.executable, "-m", "kerassave_callbacks", "cleanup", export_dir]
    os.execv(sys.executable, command + ["--json"])
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root)")
def test_a_reused_pid_in_the_same_namespace_does_not_keep_a_dead_writers_temporary(
    tmp_path,
):
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c"]
        + [REUSED_PID, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (removed,) = json.loads(out.stdout)["removed"]
    assert os.path.basename(removed).startswith(layout.TEMP_PREFIX)
    assert os.listdir(tmp_path) == []


# 5. A file written aside inside a version by a process that died.


SIDE_WRITE_THEN_DIE = """
import os, sys, time
from kerassave_callbacks import _fs, layout
path = os.path.join(sys.argv[1], layout.EXPORT_INFO)
_fs.write_bytes(f"{path}.{layout.temp_name(time.time())}", b"{}")
os.kill(os.getpid(), 9)  # Dies before the rename, as record_metrics could.
"""


@pytest.mark.parametrize("cleaner", ["exporter", "command"])
def test_cleanup_removes_dead_writers_side_temporaries_inside_versions(
    versions, tmp_path, cleaner
):
    export_dir, found = _copy(versions, tmp_path)
    version = export_dir / str(found[1])
    died = subprocess.run([sys.executable, "-c", SIDE_WRITE_THEN_DIE, str(version)])
    assert died.returncode == -signal.SIGKILL
    extra = version / "assets.extra"
    (leftover,) = [n for n in os.listdir(extra) if ".temp-" in n]
    # Kept: a live writer's side temporary and the user's own files.
    live = f"export_info.json.{layout.temp_name(0)}"
    mine = ["notes.txt", "my.temp-file", live]
    for name in mine:
        (extra / name).write_text("mine")

    if cleaner == "exporter":
        VersionedExporter(str(export_dir), validate=False).close()
    else:
        out = kerassave("cleanup", export_dir, "--json")
        assert json.loads(out.stdout) == {"removed": [str(extra / leftover)]}
    left = sorted(os.listdir(extra))
    assert leftover not in left
    assert set(mine) <= set(left) and "export_info.json" in left
    assert ExportDir(str(export_dir)).versions() == found


# 6. The loader imports no module an export names.


EVIL = """
import os
open(os.environ["EVIL_MARKER"], "w").write("the export ran this")
import {keras}
class Evil({keras}.Sequential):
    pass
"""

LOAD = """
import sys
import kerassave_callbacks as ks
if sys.argv[2] == "tf_keras":
    import tf_keras  # The caller has it.
try:
    ks.load_from_saved_model(sys.argv[1])
    print("loaded")
except ValueError as e:
    print(str(e).replace("\\n", " "))
"""


def _sequential(kind: str = "tf_keras"):
    K = importlib.import_module(kind)
    model = K.Sequential([K.Input((4,), name="x"), K.layers.Dense(2, name="d")])
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.parametrize("kind", ["keras", "tf_keras"])
def test_safe_mode_refuses_classes_from_modules_the_export_names(tmp_path, kind):
    path = tmp_path / "export"
    export_saved_model(_sequential(kind), str(path))
    # The model's own class, taken from a module the export names (tf_keras
    # of today imports it and calls its from_config, safe_mode or not).
    config_path = path / layout.MODEL_JSON
    config = json.loads(config_path.read_text())
    config.update(module="evil_layers", class_name="Evil", registered_name=None)
    config_path.write_text(json.dumps(config))
    (tmp_path / "evil_layers.py").write_text(EVIL.format(keras=kind))
    marker = tmp_path / "marker"

    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(path), kind],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "EVIL_MARKER": str(marker),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "names classes outside Keras" in out.stdout
    assert "evil_layers.Evil" in out.stdout and "custom_objects" in out.stdout
    assert not marker.exists()


def test_keras_asks_for_one_keras_and_refuses_the_others_export(tmp_path):
    from kerassave_callbacks import load_from_saved_model

    path = tmp_path / "export"
    model = _sequential()
    export_saved_model(model, str(path))
    with pytest.raises(ValueError, match=r"keras='keras'.*written by tf_keras"):
        load_from_saved_model(str(path), keras="keras")
    with pytest.raises(ValueError, match=r"keras='jax'.*\('keras', 'tf_keras'\)"):
        load_from_saved_model(str(path), keras="jax")
    loaded = load_from_saved_model(str(path), keras="tf_keras")
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=0
    )


# 7. `kerassave prune` applies the exporter's retention, every field.


def test_prune_and_the_exporter_keep_the_same_versions_for_one_policy(
    versions, tmp_path
):
    policy = RetentionPolicy(keep=1, keep_best=1, keep_every_n_hours=1, grace_seconds=0)
    by_exporter, found = _copy(versions, tmp_path / "a")
    by_prune, _ = _copy(versions, tmp_path / "b")
    model = classifier()
    newest = T0 + 7200
    with VersionedExporter(
        str(by_exporter),
        retention=policy,
        monitor="loss",
        validate=False,
        clock=lambda: newest,
    ) as exporter:
        exporter.export(model, metrics={"loss": 1.0})
    kept_by_exporter = [v for v in exporter.versions() if v in found]

    # prune protects nothing: the exporter's newest stands in for it.
    shutil.copytree(by_exporter / str(exporter.versions()[-1]), by_prune / "9999999999")
    out = kerassave(
        "prune",
        by_prune,
        "--keep",
        policy.keep,
        "--keep_best",
        policy.keep_best,
        "--keep_every_n_hours",
        policy.keep_every_n_hours,
        "--grace_seconds",
        policy.grace_seconds,
        "--monitor",
        "loss",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kept_by_prune = [v for v in ExportDir(str(by_prune)).versions() if v in found]
    # keep_every_n_hours keeps T0's and T0+1.1h's; keep_best the 0.3 one.
    assert kept_by_exporter == kept_by_prune == [found[0], found[1], found[2]]
    assert json.loads(out.stdout)["deleted"] == [found[3]]
