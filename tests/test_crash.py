"""Exports killed with SIGKILL at random moments leave nothing TF Serving loads
half-written, and the next exporter cleans up after them."""

from __future__ import annotations

import json
import os
import random
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

KILLS = 6


def _temporaries(export_dir) -> list[str]:
    return [n for n in os.listdir(export_dir) if n.startswith("temp-")]


def _kill_mid_export(export_dir, rng: random.Random) -> tuple[int, int]:
    """Kills an exporting worker; returns its exit code and the temporaries
    it left (each new worker cleans up those of the one before)."""
    script = os.path.join(os.path.dirname(__file__), "export_worker.py")
    worker = subprocess.Popen(
        [sys.executable, script, "crash", str(export_dir), "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "ready"
    worker.stdout.readline()  # The first export is committed: now the hot loop.
    time.sleep(rng.uniform(0.0, 0.6))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    return worker.returncode, len(_temporaries(export_dir))


def test_sigkill_at_random_moments_leaves_only_loadable_versions(tmp_path):
    rng = random.Random(1234)
    results = [_kill_mid_export(tmp_path, rng) for _ in range(KILLS)]
    codes = tuple(code for code, _ in results)
    leftovers = [left for _, left in results]

    exporter = VersionedExporter(str(tmp_path), keep=2)

    assert codes == (-signal.SIGKILL,) * KILLS
    assert sum(leftovers) >= 1  # Some kills did land mid-export.
    names = sorted(os.listdir(tmp_path))
    assert all(n.isdigit() for n in names), names  # Temporaries cleaned up.
    assert [int(n) for n in names] == exporter.versions()
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
