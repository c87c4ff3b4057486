"""Extension points: each new piece is defined here, in the test file
alone, and exercised through `SavedModelExporter` in `fit`."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    DirectoryLayout,
    ExportOptions,
    RetentionPolicy,
    SavedModelExporter,
    cli,
    export_dir,
    export_saved_model,
    signatures,
)

from conftest import classifier, classifier_data
from helpers import run_tf1


@dataclasses.dataclass(frozen=True)
class KeepEvenEpochs:
    """A toy retention rule: every version taken at an even epoch."""

    def keeps(self, versions, monitor):
        return {v.version for v in versions if (v.info.epoch or 0) % 2 == 0}


def test_a_retention_rule_is_one_class(tmp_path):
    policy = RetentionPolicy(keep=1, grace_seconds=0, rules=[KeepEvenEpochs()])
    exporter = SavedModelExporter(str(tmp_path), retention=policy, validate=False)
    x, y = classifier_data()
    classifier().fit(x, y, epochs=5, verbose=0, callbacks=[exporter])

    epochs = [v.epoch for v in export_dir.ExportDir(str(tmp_path)).describe()]
    # Epochs completed 1..5: the even ones, and the newest (5).
    assert epochs == [2, 4, 5]


def test_a_rule_without_keeps_is_refused_naming_it():
    with pytest.raises(TypeError, match=r"keeps\(versions, monitor\).*'oops'"):
        RetentionPolicy(rules=["oops"])


@dataclasses.dataclass(frozen=True)
class NestedLayout(DirectoryLayout):
    """A toy layout: the SavedModel one level down in each version, as
    Triton's `<model>/<version>/model.savedmodel` has it."""

    saved_model_dir: str = "model.savedmodel"


def test_a_directory_layout_is_one_value(tmp_path):
    where = NestedLayout()
    exporter = SavedModelExporter(
        str(tmp_path),
        keep=2,
        grace_seconds=0,
        options=ExportOptions(layout=where),
    )
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[exporter])

    view = export_dir.ExportDir(str(tmp_path), where)
    versions = view.versions()
    assert versions == exporter.versions() and len(versions) == 2
    assert [r.epoch for r in view.describe()] == [2, 3]
    for version in versions:
        root = tmp_path / str(version) / "model.savedmodel"
        assert sorted(os.listdir(tmp_path / str(version))) == ["model.savedmodel"]
        served = tf.saved_model.load(str(root), tags=["serve"])
        (y_served,) = served.signatures["serving_default"](
            features=tf.constant(x[:4])
        ).values()
        assert y_served.shape == (4, 3)
    np.testing.assert_allclose(y_served, model(x[:4]), atol=1e-5)
    # TF Serving's layout sees no complete version here.
    assert export_dir.ExportDir(str(tmp_path)).versions() == []


def _top_class(spec, output_specs, model):
    """A toy signature kind's answer: the best class and its score."""
    name = spec.output_name(output_specs, model.name)

    def answer(outputs):
        scores = outputs[name]
        return {
            "top": tf.argmax(scores, axis=-1),
            "top_score": tf.reduce_max(scores, axis=-1),
        }

    return answer


# A toy signature kind, registered from this file alone: Predict with
# serialized tf.Examples under "records", answering the top class.
TOP_CLASS = signatures.register(
    signatures.SignatureKind("top_class", input_key="records", answer=_top_class)
)


def test_a_signature_kind_is_one_registration(tmp_path, capsys):
    x, y = classifier_data()
    exporter = SavedModelExporter(
        str(tmp_path),
        keep=1,
        grace_seconds=0,
        # serving_default of the toy kind: warm-up requests are Predict
        # requests of serialized examples under its input key; the gate
        # replays them and compares its answers with the model's.
        signatures={"serving_default": signatures.SignatureSpec("top_class")},
        warmup_inputs=x[:3],
    )
    model = classifier()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[exporter])

    (version,) = exporter.versions()
    path = str(tmp_path / str(version))
    records = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "features": tf.train.Feature(
                        float_list=tf.train.FloatList(value=row)
                    )
                }
            )
        ).SerializeToString()
        for row in x[:5]
    ]
    (got,) = run_tf1(path, "serve", "serving_default", {"records": records})
    want = model(x[:5]).numpy()
    np.testing.assert_array_equal(got["top"], want.argmax(-1))
    np.testing.assert_allclose(got["top_score"], want.max(-1), atol=1e-5)
    # The flag spells it too, and `kerassave verify` feeds it the warm-up rows.
    assert signatures.parse("serving_default=top_class") == {
        "serving_default": signatures.SignatureSpec("top_class")
    }
    assert cli.main(["verify", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["ok"] and row["version"] == version


def test_a_signature_kind_name_is_taken_once():
    with pytest.raises(ValueError, match=r"'top_class' is registered already"):
        signatures.register(signatures.SignatureKind("top_class"))
    with pytest.raises(ValueError, match=r"Classify and Regress take .*'inputs'"):
        signatures.SignatureKind("toy", signatures.CLASSIFY_METHOD, "records")


def test_kerassave_reads_the_layout_it_is_told(tmp_path, capsys):
    where = NestedLayout()
    exporter = SavedModelExporter(
        str(tmp_path), keep=3, grace_seconds=0, options=ExportOptions(layout=where)
    )
    x, y = classifier_data()
    classifier().fit(x, y, epochs=3, verbose=0, callbacks=[exporter])
    versions = exporter.versions()
    nested = ["--saved_model_dir", where.saved_model_dir, "--json"]

    def kerassave(*args):
        code = cli.main([*args])
        return code, json.loads(capsys.readouterr().out)

    code, rows = kerassave("list", str(tmp_path), *nested)
    assert code == 0 and [(r["version"], r["epoch"]) for r in rows] == list(
        zip(versions, [1, 2, 3], strict=True)
    )
    # Without the flag: TF Serving's layout, where none of these is complete.
    assert kerassave("list", str(tmp_path), "--json") == (0, [])

    code, rows = kerassave("verify", str(tmp_path), *nested)
    assert code == 0 and [r["version"] for r in rows] == versions
    assert all(r["path"].endswith("/model.savedmodel") for r in rows)

    code, _ = kerassave(
        "prune", str(tmp_path), "--keep", "1", "--grace_seconds", "0", *nested
    )
    assert code == 0
    assert export_dir.ExportDir(str(tmp_path), where).versions() == versions[-1:]

    assert cli.main(["list", str(tmp_path), "--saved_model_dir", "../up"]) == 2
    assert "saved_model_dir" in capsys.readouterr().err


# A toy kind on the model's own inputs (no tf.Example parsing).
signatures.register(signatures.SignatureKind("top_of_inputs", answer=_top_class))


def test_a_signature_kind_may_take_the_models_own_inputs(tmp_path):
    x, y = classifier_data()
    model = classifier()
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "export")
    export_saved_model(
        model, path, signatures={"top": signatures.SignatureSpec("top_of_inputs")}
    )

    (got,) = run_tf1(path, "serve", "top", {"features": x[:5]})
    want = model(x[:5]).numpy()
    np.testing.assert_array_equal(got["top"], want.argmax(-1))
    np.testing.assert_allclose(got["top_score"], want.max(-1), atol=1e-5)
