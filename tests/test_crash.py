"""Exports killed with SIGKILL at chosen points leave nothing TF Serving loads
half-written, and the next exporter cleans up after them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import VersionedExporter, _files, export_saved_model, layout

from conftest import classifier

# Where a worker is killed: a predicate on a temporary's directory, checked
# while the worker exports in a loop (keep=2, no grace: retention retires
# a version at every export).
POINTS = {
    "graph_file_written": lambda t: (
        (t / "saved_model.pb").exists()
        and not (t / "variables" / "variables.index").exists()
    ),
    "variables_written": lambda t: (
        (t / "variables" / "variables.index").exists()
        and not (t / "assets.extra" / "export_info.json").exists()
    ),
    # A whole version under a temporary name: staged and about to be
    # committed, or retired by retention and being deleted.
    "whole_version_in_a_temporary": lambda t: (
        t / "assets.extra" / "export_info.json"
    ).exists(),
}


def _kill_when(export_dir, point) -> str:
    """Starts an exporting worker and SIGKILLs it as soon as one of its
    temporaries is at `point`; returns that temporary's name."""
    script = os.path.join(os.path.dirname(__file__), "export_worker.py")
    worker = subprocess.Popen(
        [sys.executable, script, "crash", str(export_dir), "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "ready"
        worker.stdout.readline()  # The first export is committed: now the loop.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for name in os.listdir(export_dir):
                if name.startswith("temp-") and POINTS[point](export_dir / name):
                    worker.send_signal(signal.SIGKILL)
                    return name
            time.sleep(0.0005)
        raise AssertionError(f"the worker never reached {point}")
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_leaves_only_loadable_versions_and_is_cleaned_up(tmp_path, point):
    seen = _kill_when(tmp_path, point)
    # The temporary it was writing or deleting is left (or, in the instant
    # before the kill, became a complete version); nothing half-written has
    # an integer name.
    left = os.listdir(tmp_path)
    assert seen in left or all(n.isdigit() for n in left)
    for name in [n for n in left if n.isdigit()]:
        assert _files.missing_files(str(tmp_path / name), (layout.EXPORT_INFO,)) == []

    exporter = VersionedExporter(str(tmp_path), keep=2)  # Cleans up at start.

    names = sorted(os.listdir(tmp_path))
    assert [int(n) for n in names] == exporter.versions()  # No temporaries.
    for name in names:
        served = tf.saved_model.load(str(tmp_path / name), tags=["serve"])
        (out,) = served.signatures["serving_default"](x=tf.ones([1, 64])).values()
        assert out.shape == (1, 4) and np.isfinite(out.numpy()).all()


@pytest.fixture(scope="module")
def staged_export(tmp_path_factory):
    """A complete staged version: a real export plus its export info."""
    path = tmp_path_factory.mktemp("staged") / "export"
    export_saved_model(classifier(), str(path))
    info = path / "assets.extra" / "export_info.json"
    info.parent.mkdir()
    info.write_text('{"version": 5}')
    return path


@pytest.mark.parametrize(
    "damage",
    [
        "saved_model.pb",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
        "assets.extra/export_info.json",
    ],
)
def test_a_damaged_staged_tree_is_never_published(tmp_path, staged_export, damage):
    staged = tmp_path / layout.temp_name(time.time())
    shutil.copytree(staged_export, staged)
    (staged / damage).unlink()

    with pytest.raises(_files.IncompleteExportError, match=f"lacks {damage[:9]}"):
        _files.commit(str(staged), str(tmp_path / "5"), (layout.EXPORT_INFO,))
    assert not (tmp_path / "5").exists()
    assert VersionedExporter(str(tmp_path)).versions() == []


def test_a_complete_staged_tree_is_published(tmp_path, staged_export):
    staged = tmp_path / layout.temp_name(time.time())
    shutil.copytree(staged_export, staged)
    _files.commit(str(staged), str(tmp_path / "5"), (layout.EXPORT_INFO,))
    assert sorted(os.listdir(tmp_path)) == ["5"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root)")
def test_cleanup_in_another_pid_namespace_spares_a_live_writers_temporary(tmp_path):
    # This process is the live writer; a cleaner in a PID namespace of its
    # own (a sidecar container of the same pod) cannot see its PID.
    temp = tmp_path / layout.temp_name(time.time())
    (temp / "variables").mkdir(parents=True)
    (temp / "variables" / "variables.index").write_bytes(b"being written")
    out = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-m", "kerassave_callbacks"]
        + ["cleanup", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"removed": []}
    assert (temp / "variables" / "variables.index").read_bytes() == b"being written"
