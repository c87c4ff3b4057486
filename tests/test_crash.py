"""Exports killed with SIGKILL at random moments leave nothing TF Serving loads
half-written, and the next exporter cleans up after them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from kerassave_callbacks import VersionedExporter

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
