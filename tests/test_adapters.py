"""The two Keras adapters implement the one written interface."""

from __future__ import annotations

import inspect
import json

import pytest

from kerassave_callbacks import export_saved_model, load_from_saved_model
from kerassave_callbacks.core import adapter, keras2, keras3

from conftest import classifier

MEMBERS = sorted(
    name
    for name, member in vars(adapter.KerasAdapter).items()
    if inspect.isfunction(member) and not name.startswith("_")
)


@pytest.mark.parametrize("module", [keras3, keras2], ids=["keras3", "keras2"])
def test_each_adapter_defines_every_member_with_its_arguments(module):
    for name in MEMBERS:
        declared = inspect.signature(getattr(adapter.KerasAdapter, name))
        defined = inspect.signature(getattr(module, name))
        assert list(defined.parameters) == list(declared.parameters)[1:], name
    own = {
        name
        for name, member in vars(module).items()
        if inspect.isfunction(member)
        and member.__module__ == module.__name__
        and not name.startswith("_")
    }
    assert own == set(MEMBERS)


def test_the_adapters_never_import_each_other():
    for module, other in ((keras3, "keras2"), (keras2, "keras3")):
        imports = [
            line
            for line in inspect.getsource(module).splitlines()
            if line.startswith(("import ", "from "))
        ]
        assert not [line for line in imports if other in line], module.__name__


def test_an_export_of_an_unknown_keras_is_refused_by_name(tmp_path):
    path = tmp_path / "export"
    export_saved_model(classifier(), str(path))
    config = json.loads((path / "assets" / "saved_model.json").read_text())
    config["keras_version"] = "4.1.0"
    (path / "assets" / "saved_model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"written by Keras '4.1.0'"):
        load_from_saved_model(str(path))
