"""The Exports dashboard, served by a real TensorBoard and rendered by a
headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import tensorflow as tf

from kerassave_callbacks import SavedModelExporter, events

from helpers import BreakExportDir, fit_classifier, get_json, tensorboard_server

PLUGIN = "kerassave_exports"


@pytest.fixture(scope="module")
def trained_with_a_failure(tmp_path_factory):
    """Four epochs, keep=1: two versions removed by retention (the second
    by the break), one failed export (epoch 3), one version on disk."""
    root = tmp_path_factory.mktemp("dashboard")
    export_dir = root / "exports"
    exporter = SavedModelExporter(
        str(export_dir),
        keep=1,
        monitor="loss",
        on_error="warn",
        log_dir=str(root / "logs"),
    )
    breaker = BreakExportDir(export_dir, break_at=2, mend_at=3)
    fit_classifier([breaker, exporter], epochs=4)
    return root, exporter.versions()


def _enabled(base) -> bool:
    return get_json(f"{base}/data/plugins_listing").get(PLUGIN, {}).get("enabled")


def test_the_dashboard_lists_each_export_with_its_status(trained_with_a_failure):
    root, versions = trained_with_a_failure
    with tensorboard_server(root / "logs", _enabled) as base:
        listing = get_json(f"{base}/data/plugins_listing")[PLUGIN]
        runs = get_json(f"{base}/data/plugin/{PLUGIN}/runs")
        rows = get_json(f"{base}/data/plugin/{PLUGIN}/exports?run=export")

    assert listing["enabled"] and listing["tab_name"] == "Exports"
    assert runs == ["export"]
    assert [r["status"] for r in rows] == ["removed", "removed", "failed", "on disk"]
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert "No version directory was left" in rows[2]["error"]
    assert rows[3]["version"] == versions[-1] and rows[3]["serving"]
    assert rows[3]["best"] and rows[3]["status_source"] == "export_dir"
    assert not any(r.get("serving") for r in rows[:3])


def test_chromium_renders_the_table(trained_with_a_failure, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    root, versions = trained_with_a_failure
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu"]
    with tensorboard_server(root / "logs", _enabled) as base:
        dom = subprocess.run(
            [
                *flags,
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"{base}/data/plugin_entry.html?name={PLUGIN}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        screenshot = tmp_path / "exports.png"
        subprocess.run(
            [
                *flags,
                "--hide-scrollbars",
                "--window-size=1280,560",
                "--virtual-time-budget=15000",
                f"--screenshot={screenshot}",
                f"{base}/#{PLUGIN}",
            ],
            capture_output=True,
            timeout=120,
        )

    assert 'data-ready="true"' in dom
    assert dom.count('<tr class="removed"') == 2
    assert dom.count('<tr class="failed"') == 1 and "failed: Export of version" in dom
    assert f'<tr class="kept" data-version="{versions[-1]}">' in dom
    assert ">served<" in dom and ">best<" in dom
    assert re.search(r">\d+\.\d KiB<", dom)  # As `kerassave list` prints sizes.
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000


def test_an_unreadable_record_is_a_failed_row_and_hides_no_run(
    trained_with_a_failure, tmp_path
):
    root, _ = trained_with_a_failure
    logs = tmp_path / "logs"
    shutil.copytree(root / "logs", logs / "good")
    writer = tf.summary.create_file_writer(str(logs / "bad"))
    with writer.as_default():
        for step, value in ((1, "not json {"), (2, "[1, 2]")):
            tf.summary.write(
                events.RECORD,
                tf.constant(value),
                step=step,
                metadata=events._RECORD_META,
            )
    writer.close()

    with tensorboard_server(logs, _enabled) as base:
        runs = get_json(f"{base}/data/plugin/{PLUGIN}/runs")
        bad = get_json(f"{base}/data/plugin/{PLUGIN}/exports?run=bad")
        good = get_json(f"{base}/data/plugin/{PLUGIN}/exports?run=good/export")

    assert runs == ["bad", "good/export"]
    assert [(r["step"], r["status"]) for r in bad] == [(1, "failed"), (2, "failed")]
    assert all("could not be read" in r["error"] for r in bad)
    assert [r["status"] for r in good] == ["removed", "removed", "failed", "on disk"]
