"""Extension points: each new piece is defined here, in the test file
alone, and exercised through `SavedModelExporter` in `fit`."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from kerassave_callbacks import (
    DirectoryLayout,
    ExportOptions,
    RetentionPolicy,
    SavedModelExporter,
    export_dir,
)

from conftest import classifier, classifier_data


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
