"""The example binaries, run as subprocesses the way a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from kerassave_callbacks import ExportDir, VersionedExporter
from kerassave_callbacks.flags import EXPORT_FLAG_NAMES

from helpers import cluster_configs, get_json, tensorboard_server

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


# As a user's shell has it: TF's log level not set (the suite sets it).
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
# What TensorFlow prints at start-up on a machine without a GPU.
START_UP_NOISE = ("cuda drivers", "cpu_feature_guard", "cuInit", "InitializeLog")


def _run(script, *args, cwd, check=True):
    out = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=USER_ENV,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """train_digits.py with no export flags, in a fresh working directory:
    (its working directory, what it printed)."""
    cwd = tmp_path_factory.mktemp("job")
    out = _run("train_digits.py", "--epochs=3", "--export_keep_best=0", cwd=cwd)
    return cwd, out.stdout + out.stderr


@pytest.fixture(scope="module")
def trained(training_run):
    return training_run[0]


def test_one_line_per_export_and_nothing_from_tensorflow_that_we_cause(
    training_run,
):
    _, output = training_run
    lines = output.splitlines()
    assert len([line for line in lines if ": exported version " in line]) == 3
    for noise in (
        *START_UP_NOISE,
        "signature_serialization",
        "functional_saver",
        "fingerprint",
        "Assets written to",
        "is deprecated",
        "temp-",
    ):
        assert noise not in output, noise


def test_train_digits_writes_versions_and_events_under_the_cwd(trained):
    versions = VersionedExporter(str(trained / "exports")).versions()
    acc = event_accumulator.EventAccumulator(
        str(trained / "logs" / "export"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    acc.Reload()

    assert len(versions) == 3  # Three epochs; the newest 3 are kept.
    assert [int(e.step) for e in acc.Tensors("export/event")] == [45, 90, 135]
    assert sorted(os.listdir(trained)) == ["exports", "logs"]


def test_exports_to_keep_flag_applies(tmp_path):
    _run(
        "train_digits.py",
        "--epochs=3",
        f"--export_dir={tmp_path / 'models'}",
        "--exports_to_keep=1",
        "--export_grace_seconds=0",
        "--export_keep_best=0",
        "--export_log_dir=",
        cwd=tmp_path,
    )
    assert len(VersionedExporter(str(tmp_path / "models")).versions()) == 1
    assert sorted(os.listdir(tmp_path)) == ["models"]


def test_train_digits_on_two_workers_with_tf_keras(tmp_path):
    """The multi-worker launch of docs/keras2.md: two processes, one working
    directory; only the chief exports."""
    script = os.path.join(EXAMPLES, "train_digits.py")
    workers = [
        subprocess.Popen(
            [sys.executable, script, "--keras=2", "--epochs=2"],
            cwd=tmp_path,
            env=dict(os.environ, TF_CONFIG=config),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for config in cluster_configs(2)
    ]
    try:
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-3000:]
    exported = [out.count(": exported version ") for out in outputs]
    assert exported == [2, 0]
    exports = ExportDir(str(tmp_path / "exports"))
    versions = exports.versions()
    assert len(versions) == 2
    assert exports.info(versions[-1])["library"]["keras"].startswith("2.")


def test_serve_latest_predicts_with_the_serve_graph(trained):
    out = _run("serve_latest.py", "--samples=4", cwd=trained).stdout
    newest = max(VersionedExporter(str(trained / "exports")).versions())
    lines = out.splitlines()
    assert lines[0] == f"version: exports/{newest}"
    assert len([line for line in lines if line.startswith("predicted ")]) == 4


def test_continue_training_lowers_the_eval_loss(trained):
    out = _run("continue_training.py", "--steps=30", cwd=trained).stdout
    values = [
        float(line.rsplit(":", 1)[1]) for line in out.splitlines() if "loss" in line
    ]
    before, after = values
    assert after < before


def test_helpfull_lists_the_export_flags(tmp_path):
    # absl prints the help to stdout and exits with status 1.
    out = _run("train_digits.py", "--helpfull", cwd=tmp_path, check=False).stdout
    assert "--epochs" in out
    for name in EXPORT_FLAG_NAMES:
        assert f"--{name}" in out or f"--[no]{name}" in out


def test_a_bad_flag_exits_non_zero_naming_it_and_deletes_nothing(tmp_path):
    old = tmp_path / "exports" / "123"
    old.mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"")
    out = _run("train_digits.py", "--exports_to_keep=-3", cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "--exports_to_keep" in out.stderr
    assert sorted(os.listdir(tmp_path / "exports")) == ["123"]
    assert not (tmp_path / "logs").exists()


def test_train_text_serves_raw_strings_from_the_newest_version(tmp_path):
    out = _run("train_text.py", "--epochs=4", cwd=tmp_path)
    scores = {}
    for line in out.stdout.splitlines():
        score, _, sentence = line.partition("  ")
        if sentence:
            scores[sentence] = float(score)
    assert len(VersionedExporter(str(tmp_path / "text_exports")).versions()) == 2
    assert sorted(os.listdir(tmp_path)) == ["text_data", "text_exports"]
    assert (tmp_path / "text_data" / "reviews.tsv").exists()
    good, bad = (
        scores["a brilliant and funny story"],
        scores["the plot was dull and tedious"],
    )
    assert good > 0.5 > bad


def test_a_default_tensorboard_serves_the_export_scalars(trained):
    def has_exports(base):
        return "export" in get_json(f"{base}/data/plugin/scalars/tags")

    with tensorboard_server(trained / "logs", has_exports) as base:
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        points = get_json(
            f"{base}/data/plugin/scalars/scalars?run=export&tag=export/size_bytes"
        )
    assert set(tags.get("export", {})) == {
        "export/duration_seconds",
        "export/size_bytes",
        "export/versions_kept",
    }  # No export/version: float32 cannot chart one.
    assert tags["export"]["export/size_bytes"]["description"].startswith("<p>Bytes")
    assert "epoch_loss" in tags.get("train", {})  # Keras' own, beside it.
    assert [step for _, step, _ in points] == [45, 90, 135]
    assert all(size > 100_000 for _, _, size in points)


def test_classify_example_answers_as_the_serving_default_signature(tmp_path):
    out = _run("classify_examples.py", "--epochs=1", "--samples=6", cwd=tmp_path)
    lines = out.stdout.splitlines()
    (version,) = [
        line.split(": ", 1)[1] for line in lines if line.startswith("version: ")
    ]
    classified = [
        int(line.split()[1]) for line in lines if line.startswith("classified ")
    ]
    assert len(classified) == 6

    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, EXAMPLES)
    import digits

    _, (x, _) = digits.load_digits()
    serve = tf.saved_model.load(str(tmp_path / version), tags=["serve"])
    (logits,) = serve.signatures["serving_default"](pixels=tf.constant(x[:6])).values()
    assert classified == np.argmax(logits.numpy(), axis=-1).tolist()
