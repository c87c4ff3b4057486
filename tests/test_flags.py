"""kerassave_callbacks.flags: definitions, validators, exporter_from_flags."""

from __future__ import annotations

import pytest
from absl import flags
from absl.testing import flagsaver

from kerassave_callbacks import (
    SavedModelExporter,
    define_export_flags,
    exporter_from_flags,
    signatures,
)
from kerassave_callbacks.flags import EXPORT_FLAG_NAMES

FLAGS = flags.FLAGS
if "export_dir" not in FLAGS:
    define_export_flags()
FLAGS.mark_as_parsed()


def test_every_export_flag_is_defined():
    assert set(EXPORT_FLAG_NAMES) <= set(FLAGS)
    assert {
        "export_dir",
        "exports_to_keep",
        "export_every_n_epochs",
        "export_serving_only",
        "export_log_dir",
    } <= set(EXPORT_FLAG_NAMES)


@flagsaver.flagsaver(
    export_dir="/tmp/models",
    exports_to_keep=3,
    export_every_n_epochs=2,
    export_monitor="val_loss",
    export_mode="min",
    export_keep_best=1,
    export_log_dir="/tmp/logs",
    export_async=True,
    export_on_error="warn",
    export_signatures="classify,serving_default=examples",
)
def test_exporter_from_flags_maps_every_flag():
    exporter = exporter_from_flags(FLAGS, verbose=1)
    assert isinstance(exporter, SavedModelExporter)
    assert exporter.export_dir == "/tmp/models"
    assert (exporter.retention.keep, exporter.retention.keep_best) == (3, 1)
    assert (exporter.schedule.every_n_epochs, exporter.schedule.every_n_steps) == (
        2,
        None,
    )
    assert (exporter.monitor.name, exporter.monitor.mode, exporter.log_dir) == (
        "val_loss",
        "min",
        "/tmp/logs",
    )
    assert exporter.options.async_export and exporter.on_error == "warn"
    assert exporter.verbose == 1
    assert exporter.options.signatures == {
        "classify": signatures.classify(),
        "serving_default": signatures.examples(),
    }


@flagsaver.flagsaver(exports_to_keep=0, export_log_dir="", export_every_n_steps=0)
def test_zero_and_empty_mean_off():
    exporter = exporter_from_flags(FLAGS)
    assert exporter.retention.keep is None
    assert exporter.log_dir is None
    assert exporter.schedule.every_n_steps is None
    assert exporter.options.signatures is None


@flagsaver.flagsaver(export_grace_seconds=0.0)
def test_overrides_reach_the_values_they_belong_to():
    exporter = exporter_from_flags(
        FLAGS, keep_best=2, monitor="val_auc", serving_only=True
    )
    assert exporter.retention.keep_best == 2 and exporter.retention.grace_seconds == 0
    assert exporter.monitor.name == "val_auc" and exporter.options.serving_only


def test_a_second_definition_is_a_clear_error():
    with pytest.raises(flags.DuplicateFlagError, match="called twice"):
        define_export_flags()


def test_a_clash_with_a_flag_of_the_binary_names_it():
    own = flags.FlagValues()
    flags.DEFINE_string("export_dir", "mine", "The binary's own.", flag_values=own)
    with pytest.raises(flags.DuplicateFlagError, match="--export_dir: already"):
        define_export_flags(own)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--exports_to_keep=-3"], "exports_to_keep"),
        (["--export_every_n_epochs=0"], "export_every_n_epochs"),
        (["--export_mode=best"], "export_mode"),
        (["--export_keep_best=2"], "need --export_monitor"),
        (["--export_save_best_only"], "need --export_monitor"),
        (["--export_dir="], "--export_dir must not be empty"),
        (["--export_signatures=predict,clasify"], "--export_signatures must be"),
    ],
)
def test_bad_values_are_refused_at_parse_time(argv, fragment):
    fresh = flags.FlagValues()
    define_export_flags(fresh)
    with pytest.raises(flags.IllegalFlagValueError, match=fragment):
        fresh(["binary", *argv])
