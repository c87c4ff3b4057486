"""The `kerassave` command on real exports, and the TF Serving warm-up
requests it replays. It runs as a subprocess where the process is what a
test checks (exit codes, what reaches stderr, what is imported), and by
its `main` in this process elsewhere (TensorFlow is loaded already)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from kerassave_callbacks import SavedModelExporter, export_saved_model, layout
from kerassave_callbacks.core import warmup

from conftest import classifier, classifier_data
from helpers import kerassave_here


def kerassave(*args, check_code=None):
    out = subprocess.run(
        [sys.executable, "-m", "kerassave_callbacks", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if check_code is not None:
        assert out.returncode == check_code, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Three versions of a classifier trained with validation and warm-up
    requests: (export_dir, versions, val_loss by version)."""
    root = tmp_path_factory.mktemp("cli")
    export_dir = root / "exports"
    x, y = classifier_data()
    callback = SavedModelExporter(
        str(export_dir), keep=None, monitor="val_loss", warmup_inputs=x[:3]
    )
    classifier().fit(
        x,
        y,
        epochs=3,
        batch_size=8,
        validation_split=0.25,
        verbose=0,
        callbacks=[callback],
    )
    versions = callback.versions()
    losses = {}
    for v in versions:
        info = json.loads((export_dir / str(v) / layout.EXPORT_INFO).read_text())
        losses[v] = info["metrics"]["val_loss"]
    return export_dir, versions, losses


def _copy(exports, tmp_path):
    export_dir, versions, losses = exports
    target = tmp_path / "exports"
    shutil.copytree(export_dir, target)
    return target, versions, losses


def test_list_json_has_one_row_per_version_oldest_first(exports):
    export_dir, versions, _ = exports
    rows = json.loads(kerassave("list", export_dir, "--json", check_code=0).stdout)

    assert [r["version"] for r in rows] == versions
    assert set(rows[0]) == {
        "version",
        "path",
        "created",
        "epoch",
        "step",
        "metrics",
        "size_bytes",
        "tags",
    }
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [3, 6, 9]
    assert rows[0]["tags"] == ["serve", "train", "eval"]
    assert "val_loss" in rows[0]["metrics"] and rows[0]["size_bytes"] > 10_000
    table = kerassave("list", export_dir, check_code=0).stdout
    assert all(str(v) in table for v in versions) and "val_loss=" in table


def test_inspect_shows_tags_signatures_and_who_wrote_it(exports):
    export_dir, versions, _ = exports
    path = export_dir / str(versions[-1])
    result = json.loads(kerassave_here("inspect", path, "--json", check_code=0).stdout)

    serve = result["tags"]["serve"]["serving_default"]
    assert serve["method_name"] == "tensorflow/serving/predict"
    assert serve["inputs"] == {"features": {"dtype": "float32", "shape": [-1, 4]}}
    assert serve["outputs"]["logits"]["shape"] == [-1, 3]
    train = result["tags"]["train"]["train"]
    assert train["inputs"]["logits_target"]["dtype"] == "int64"
    assert result["export_info"]["version"] == versions[-1]
    text = kerassave_here("inspect", path, check_code=0).stdout
    assert "written by: keras" in text and "tensorflow 2." in text


def test_warmup_requests_are_written_in_every_version(exports):
    export_dir, versions, _ = exports
    x, _ = classifier_data()
    for v in versions:
        requests = warmup.read(str(export_dir / str(v)))
        assert len(requests) == 3
        assert requests[0].model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(
            tf.make_ndarray(requests[1].inputs["features"]), x[1:2]
        )


def test_verify_passes_good_versions_and_names_each_damaged_one(exports, tmp_path):
    export_dir, versions, _ = _copy(exports, tmp_path)
    # (Its stderr, run as a process: test_verify_prints_no_tensorflow_start_up_lines.)
    good = kerassave_here("verify", export_dir, check_code=0)
    assert good.stdout.count(": ok") == 3

    first, second, third = (export_dir / str(v) for v in versions)
    data = first / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    (second / "saved_model.pb").write_bytes(b"")
    (third / "variables" / "variables.index").unlink()
    out = kerassave_here("verify", export_dir, "--json", check_code=1)
    rows = json.loads(out.stdout)

    assert [r["ok"] for r in rows] == [False, False, False]
    assert "cannot be read" in rows[0]["problems"][0]
    assert "holds no graph" in rows[1]["problems"][0]
    assert "variables" in rows[2]["problems"][0]
    one = kerassave_here("verify", third, check_code=1).stdout
    assert f"{third}: FAILED" in one


def test_verify_checks_every_integer_named_entry(exports, tmp_path):
    export_dir, versions, _ = _copy(exports, tmp_path)
    # What a cleanup from another container left: the newest version TF
    # Serving would pick, without its graph; and a version with no info.
    newest = export_dir / str(versions[-1] + 1)
    shutil.copytree(export_dir / str(versions[-1]), newest)
    (newest / "saved_model.pb").unlink()
    (export_dir / str(versions[0]) / layout.EXPORT_INFO).unlink()

    rows = json.loads(
        kerassave_here("verify", export_dir, "--json", check_code=1).stdout
    )

    assert [(r["version"], r["ok"]) for r in rows] == [
        (versions[0], False),
        (versions[1], True),
        (versions[2], True),
        (versions[-1] + 1, False),
    ]
    assert rows[0]["problems"] == [f"missing {layout.EXPORT_INFO}"]
    assert rows[-1]["problems"] == ["missing saved_model.pb or saved_model.pbtxt"]


def test_prune_leaves_versions_in_their_grace_period(exports, tmp_path):
    export_dir, versions, _ = _copy(exports, tmp_path)
    newest_created = json.loads(
        (export_dir / str(versions[-1]) / layout.EXPORT_INFO).read_text()
    )["created"]
    grace = time.time() - newest_created + 600  # The oldest is out of it.

    out = kerassave(
        "prune",
        export_dir,
        "--keep",
        1,
        "--grace_seconds",
        grace,
        "--json",
        check_code=0,
    )

    assert json.loads(out.stdout) == {
        "deleted": [],
        "would_delete": [],
        "in_grace": versions[:2],
    }
    assert sorted(map(int, os.listdir(export_dir))) == versions


def test_prune_keeps_links_and_user_files_and_dry_run_deletes_nothing(
    exports, tmp_path
):
    export_dir, versions, losses = _copy(exports, tmp_path)
    pinned = tmp_path / "pinned"
    shutil.copytree(export_dir / str(versions[0]), pinned)
    (export_dir / "1").symlink_to(pinned, target_is_directory=True)
    (export_dir / "notes.txt").write_text("mine")
    (export_dir / "0123").mkdir()
    best = min(losses, key=losses.get)

    dry = kerassave(
        "prune",
        export_dir,
        "--keep",
        1,
        "--grace_seconds",
        0,
        "--dry_run",
        check_code=0,
    )
    assert sorted(os.listdir(export_dir)) == sorted(
        [*map(str, versions), "1", "notes.txt", "0123"]
    )
    assert dry.stdout.count("would delete") == 2
    kerassave(
        "prune",
        export_dir,
        "--keep",
        1,
        "--keep_best",
        1,
        "--monitor",
        "val_loss",
        "--grace_seconds",
        0,
        check_code=0,
    )

    kept = {str(versions[-1]), str(best)}
    assert sorted(os.listdir(export_dir)) == sorted([*kept, "1", "notes.txt", "0123"])
    assert os.path.islink(export_dir / "1") and (pinned / "saved_model.pb").exists()


def test_cleanup_removes_only_what_crashed_exports_left(tmp_path, exports):
    export_dir, _, _ = _copy(exports, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = layout.temp_name(1_700_000_000).replace(
        f"-{os.getpid()}-", f"-{dead.pid}-"
    )
    (export_dir / leftover).mkdir()
    (export_dir / "temp-notes").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    linked = leftover.replace("0", "1", 1)  # Also a dead writer's name.
    (export_dir / linked).symlink_to(outside, target_is_directory=True)
    before = set(os.listdir(export_dir)) - {leftover}

    out = json.loads(kerassave("cleanup", export_dir, "--json", check_code=0).stdout)

    assert out["removed"] == [str(export_dir / leftover)]
    assert set(os.listdir(export_dir)) == before
    assert (outside / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("policy", ["latest", "best", "all"])
def test_serving_config_parses_as_a_model_server_config(policy, exports):
    export_dir, versions, losses = exports
    args = ["serving_config", export_dir, "--name", "clf", "--policy", policy]
    if policy == "best":
        args += ["--monitor", "val_loss"]
    out = kerassave_here(*args, check_code=0).stdout

    config = text_format.Parse(out, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "clf" and model.model_platform == "tensorflow"
    assert model.base_path == os.path.abspath(export_dir)
    chosen = model.model_version_policy.WhichOneof("policy_choice")
    assert chosen == {"latest": "latest", "best": "specific", "all": "all"}[policy]
    if policy == "latest":
        assert model.model_version_policy.latest.num_versions == 1
    if policy == "best":
        best = min(losses, key=losses.get)
        assert list(model.model_version_policy.specific.versions) == [best]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["list", "{dir}", "--colour"], "unrecognized arguments: --colour"),
        (["list", "{missing}"], "is not a directory"),
        (["inspect", "{dir}"], "holds no saved_model.pb"),
        (["prune", "{dir}", "--keep", "1", "--keep_best", "1"], "needs --monitor"),
        (["serving_config", "{dir}", "--name", "m", "--policy", "best"], "--monitor"),
        (["prune", "/", "--keep", "1", "--dry_run"], "root of a file system"),
        (["prune", "", "--keep", "1", "--dry_run"], "is empty"),
        (["prune", "ram://", "--keep", "1"], "root of a file system"),
        (["cleanup", "/"], "root of a file system"),
        (["prune", "{dir}", "--keep", "1", "--grace_seconds", "-1"], "must be >= 0"),
    ],
    ids=[
        "unknown_flag",
        "not_a_dir",
        "not_a_saved_model",
        "prune",
        "best",
        "prune_root",
        "prune_empty",
        "prune_bucket_root",
        "cleanup_root",
        "negative_grace",
    ],
)
def test_bad_usage_exits_2_with_one_line(args, fragment, exports, tmp_path):
    export_dir, _, _ = exports
    args = [a.format(dir=export_dir, missing=tmp_path / "nope") for a in args]
    out = kerassave_here(*args, check_code=2)
    message = [line for line in out.stderr.splitlines() if "kerassave: error" in line]
    assert len(message) == 1 and fragment in message[0]


def test_the_console_script_runs(exports):
    script = shutil.which("kerassave")
    if script is None:
        pytest.skip("the package is not installed with its console script")
    export_dir, versions, _ = exports
    out = subprocess.run(
        [script, "list", str(export_dir), "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert [r["version"] for r in json.loads(out.stdout)] == versions


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        (np.zeros((1001, 4), "float32"), "1 to 1000 rows"),
        ({"wrong": np.zeros((2, 4), "float32")}, "names inputs ['wrong']"),
        (np.array([["a", "b", "c", "d"]]), "holds strings"),
        (np.zeros((2, 5), "float32"), "has shape (2, 5)"),
    ],
    ids=["too_many_rows", "wrong_name", "wrong_dtype", "wrong_shape"],
)
def test_bad_warmup_inputs_are_refused_before_anything_is_written(
    inputs, fragment, tmp_path
):
    path = tmp_path / "export"
    with pytest.raises(
        ValueError,
        match=fragment.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        export_saved_model(classifier(), str(path), warmup_inputs=inputs)
    assert os.listdir(tmp_path) == []


IMPORTS = """
import json, sys
from kerassave_callbacks import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize(
    "command, shows",
    [(["--help"], "usage: kerassave"), (["list", "{dir}"], "{newest}")],
    ids=["help", "list"],
)
def test_help_and_list_import_neither_tensorflow_nor_keras(command, shows, exports):
    export_dir, versions, _ = exports
    fill = dict(dir=export_dir, newest=versions[-1])
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS, *[a.format(**fill) for a in command]],
        capture_output=True,
        text=True,
    )
    *shown, last = out.stdout.strip().splitlines()
    assert json.loads(last) == {"code": 0, "heavy": []}
    assert shows.format(**fill) in "\n".join(shown)


def test_serving_config_json_is_the_config_itself(exports):
    export_dir, _, _ = exports
    args = ["serving_config", export_dir, "--name", "clf"]
    text = kerassave_here(*args, check_code=0).stdout
    as_json = json.loads(kerassave_here(*args, "--json", check_code=0).stdout)

    from google.protobuf import json_format

    parsed = json_format.ParseDict(as_json, model_server_config_pb2.ModelServerConfig())
    assert parsed == text_format.Parse(
        text, model_server_config_pb2.ModelServerConfig()
    )
    assert as_json["model_config_list"]["config"][0]["name"] == "clf"


def test_list_marks_the_served_and_the_best_version(exports):
    export_dir, versions, losses = exports
    out = kerassave("list", export_dir, "--monitor", "val_loss", check_code=0).stdout
    rows = {int(line.split()[0]): line for line in out.splitlines()[1:]}
    best = min(losses, key=losses.get)

    assert rows[versions[-1]].rstrip().endswith(")") and "served" in rows[versions[-1]]
    assert "best val_loss" in rows[best]
    marked = [v for v, line in rows.items() if "(" in line]
    assert sorted(marked) == sorted({versions[-1], best})
    assert all(" KiB " in line or " MiB " in line for line in rows.values())


def test_inspect_of_an_export_directory_names_a_version_to_inspect(exports):
    export_dir, versions, _ = exports
    out = kerassave("inspect", export_dir, check_code=2)
    assert f"kerassave inspect {export_dir}/{versions[-1]}" in out.stderr


def test_verify_prints_no_tensorflow_start_up_lines(exports):
    export_dir, _, _ = exports
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-m", "kerassave_callbacks", "verify", str(export_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""  # No start-up lines, no warnings of our calls.
    assert out.stdout.count(": ok") == 3
