"""Extension points: each new piece is defined here, in the test file
alone, and exercised through `SavedModelExporter` in `fit`."""

from __future__ import annotations

import dataclasses

import pytest

from kerassave_callbacks import RetentionPolicy, SavedModelExporter, export_dir

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
