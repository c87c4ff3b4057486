"""absl flags for training binaries, and the exporter they describe.

Example:

    from absl import app, flags
    from kerassave_callbacks import flags as export_flags

    export_flags.define_export_flags()

    def main(argv):
        exporter = export_flags.exporter_from_flags(flags.FLAGS)
        model.fit(x, y, epochs=10, callbacks=[exporter])

    app.run(main)
"""

from __future__ import annotations

import dataclasses

from absl import flags

from kerassave_callbacks import options as options_lib
from kerassave_callbacks import schedule as schedule_lib
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.callbacks import SavedModelExporter
from kerassave_callbacks.publish_gate import PublishGate

# The built-in signature kinds, as the flags' help names them (the registry
# is `signatures.KINDS`).
_KINDS = ", ".join(signatures_lib.KINDS)

# name -> (kind, default, help, extra keyword arguments of the DEFINE call).
_FLAGS = {
    "export_dir": (
        "string",
        "exports",
        "Base directory of the versions (TF Serving's --model_base_path).",
        {},
    ),
    "exports_to_keep": (
        "integer",
        5,
        "Newest versions to keep; 0 keeps all.",
        {"lower_bound": 0},
    ),
    "export_every_n_epochs": (
        "integer",
        1,
        "Export after every n-th epoch.",
        {"lower_bound": 1},
    ),
    "export_every_n_steps": (
        "integer",
        0,
        "Also export every n batches; 0: off.",
        {"lower_bound": 0},
    ),
    "export_serving_only": ("boolean", False, "Write only the serve graph.", {}),
    "export_signatures": (
        "string",
        "",
        f"Serving signatures: a comma list of {_KINDS}, each optionally as "
        "key=kind; empty: serving_default only.",
        {},
    ),
    "export_log_dir": (
        "string",
        "",
        "Write export events for TensorBoard under <dir>/export; empty: none.",
        {},
    ),
    "export_monitor": (
        "string",
        "",
        "Metric of the epoch logs for --export_keep_best and --export_save_best_only.",
        {},
    ),
    "export_mode": (
        "enum",
        "auto",
        "Whether a smaller or larger --export_monitor is better.",
        {"enum_values": ["min", "max", "auto"]},
    ),
    "export_keep_best": (
        "integer",
        0,
        "Also keep the n best versions by --export_monitor; 0: off.",
        {"lower_bound": 0},
    ),
    "export_save_best_only": (
        "boolean",
        False,
        "Export only when --export_monitor improves.",
        {},
    ),
    "export_keep_every_n_hours": (
        "float",
        0.0,
        "Also keep one version per n hours; 0: off.",
        {"lower_bound": 0.0},
    ),
    "export_grace_seconds": (
        "float",
        options_lib.DEFAULT_GRACE_SECONDS,
        "Delete a version retention drops only once it has been superseded "
        "this long (a model server may be loading it); 0: at once.",
        {"lower_bound": 0.0},
    ),
    "export_validate": (
        "boolean",
        True,
        "Publish a version only after it loaded as TF Serving loads it, "
        "replayed its warm-up and matched the model's answers (the publish "
        "gate); a version that fails is kept as rejected-<version>.",
        {},
    ),
    "export_validate_rtol": (
        "float",
        0.0,
        "Relative tolerance of the gate's comparison; 0: the default (1e-4, "
        "2e-2 under mixed precision).",
        {"lower_bound": 0.0},
    ),
    "export_validate_atol": (
        "float",
        0.0,
        "Absolute tolerance of the gate's comparison; 0: the default (1e-5, "
        "1e-2 under mixed precision).",
        {"lower_bound": 0.0},
    ),
    "export_validate_metric_margin": (
        "float",
        -1.0,
        "Publish only when --export_monitor is not worse than the best "
        "published version's by more than this; negative: no metric gate.",
        {},
    ),
    "export_validate_load_seconds": (
        "float",
        300.0,
        "Reject a version that takes longer than this to load.",
        {"lower_bound": 0.001},
    ),
    "export_async": ("boolean", False, "Write versions in a background thread.", {}),
    "export_on_error": (
        "enum",
        "raise",
        "On a failed export: stop training, or warn and train on.",
        {"enum_values": ["raise", "warn"]},
    ),
}
EXPORT_FLAG_NAMES = tuple(_FLAGS)


def define_export_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the `--export_*` flags (see `EXPORT_FLAG_NAMES`).

    Validators reject bad values at start-up, naming the flag, before
    anything is written.

    Example:

        define_export_flags()
        # python train.py --export_dir=/models/digits --exports_to_keep=3

    Args:
      flag_values: where to define them. Defaults to `absl.flags.FLAGS`.

    Raises:
      flags.DuplicateFlagError: called twice, or the binary already defines
        one of these flags.
    """
    taken = sorted(name for name in EXPORT_FLAG_NAMES if name in flag_values)
    if taken:
        raise flags.DuplicateFlagError(
            f"define_export_flags() cannot define --{', --'.join(taken)}: "
            "already defined (define_export_flags() called twice, or the binary "
            "defines a flag of that name). Call it once, and rename your flag."
        )
    for name, (kind, default, help_text, extra) in _FLAGS.items():
        define = getattr(flags, f"DEFINE_{kind}")
        define(
            name=name, default=default, help=help_text, flag_values=flag_values, **extra
        )
    flags.register_multi_flags_validator(
        ["export_monitor", "export_keep_best", "export_save_best_only"],
        _monitor_is_set_when_needed,
        message="--export_keep_best and --export_save_best_only need "
        "--export_monitor, e.g. --export_monitor=val_loss.",
        flag_values=flag_values,
    )
    flags.register_validator(
        "export_signatures",
        _signatures_parse,
        message=f"--export_signatures must be a comma list of {_KINDS}, each "
        "optionally as key=kind, e.g. --export_signatures=classify,examples.",
        flag_values=flag_values,
    )
    flags.register_validator(
        "export_dir",
        bool,
        message="--export_dir must not be empty.",
        flag_values=flag_values,
    )


def _signatures_parse(text: str) -> bool:
    try:
        signatures_lib.parse(text)
    except (TypeError, ValueError):
        return False
    return True


def _monitor_is_set_when_needed(values: dict) -> bool:
    needs = values["export_keep_best"] or values["export_save_best_only"]
    return bool(values["export_monitor"]) or not needs


def _gate_from_flags(v) -> PublishGate:
    margin = v.export_validate_metric_margin
    return PublishGate(
        enabled=v.export_validate,
        rtol=v.export_validate_rtol or None,
        atol=v.export_validate_atol or None,
        metric_margin=margin if margin >= 0 else None,
        load_seconds=v.export_validate_load_seconds,
    )


def exporter_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, **overrides
) -> SavedModelExporter:
    """The `SavedModelExporter` the `--export_*` flags describe.

    Example:

        callbacks = [exporter_from_flags(flags.FLAGS, verbose=1)]

    Args:
      flag_values: parsed flags, after `define_export_flags`. Defaults to
        `absl.flags.FLAGS`.
      **overrides: `SavedModelExporter` arguments that no flag sets (e.g.
        `input_signature`, `verbose`) or that override one.

    Returns:
      The callback to pass to `model.fit`.
    """
    v = flag_values
    values = {
        "retention": options_lib.RetentionPolicy(
            keep=v.exports_to_keep or None,
            keep_best=v.export_keep_best or None,
            keep_every_n_hours=v.export_keep_every_n_hours or None,
            grace_seconds=v.export_grace_seconds,
        ),
        "options": options_lib.ExportOptions(
            serving_only=v.export_serving_only,
            async_export=v.export_async,
            signatures=signatures_lib.parse(v.export_signatures),
            validate=_gate_from_flags(v),
        ),
        "schedule": schedule_lib.ExportSchedule(
            every_n_epochs=v.export_every_n_epochs,
            every_n_steps=v.export_every_n_steps or None,
            save_best_only=v.export_save_best_only,
        ),
    }
    arguments = dict(
        export_dir=v.export_dir,
        monitor=v.export_monitor or None,
        mode=v.export_mode,
        log_dir=v.export_log_dir or None,
        on_error=v.export_on_error,
    )
    for name, value in values.items():
        fields = {f.name for f in dataclasses.fields(value)}
        own = {k: overrides.pop(k) for k in list(overrides) if k in fields}
        arguments[name] = dataclasses.replace(value, **own)
    arguments.update(overrides)
    return SavedModelExporter(**arguments)
