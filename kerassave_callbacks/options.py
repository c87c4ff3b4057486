"""Options as values: what to watch, what to keep, what to write.

Each is a frozen dataclass validated once, in its constructor, before
anything touches the disk. `VersionedExporter`, `SavedModelExporter`, the
absl flags and the `kerassave` command build and pass these; the exporters'
keyword arguments build the same values. A leaf: no TensorFlow, no Keras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from kerassave_callbacks._checks import check_choice, check_count, check_seconds
from kerassave_callbacks.layout import TF_SERVING, DirectoryLayout, finite_or_none
from kerassave_callbacks.publish_gate import as_gate

MODES = ("min", "max", "auto")
# Name fragments of metrics where larger is better (for mode="auto").
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "iou")
# How long a superseded version stays on disk before retention deletes it:
# TF Serving lists the directory every second and may have just started to
# load the version that a newer export superseded.
DEFAULT_GRACE_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Monitor:
    """The metric that ranks versions, and which way is better.

    The one place that decides "is this value better": retention's
    `keep_best`, the callback's `save_best_only`, `kerassave prune` and the
    Exports dashboard all ask it.

    Example:

        monitor = Monitor("val_auc", mode="max", min_delta=1e-3)
        monitor.better(0.912, best=0.910)  # True
        SavedModelExporter("/tmp/exports", monitor=monitor, keep_best=1)

    Args:
      name: a key of the epoch logs (or of `export(metrics=...)`), e.g.
        "val_loss"; None watches nothing. Defaults to None.
      mode: "min", "max" or "auto": with "auto", names ending in "loss" or
        holding "error" are minimized and accuracy-like names ("acc", "auc",
        "precision", "recall", "f1", "iou") maximized; anything else is
        minimized, like a loss. Defaults to "auto".
      min_delta: a value must beat the best by more than this to be better.
        Defaults to 0.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
    """

    name: str | None = None
    mode: str = "auto"
    min_delta: float = 0.0

    def __post_init__(self):
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(
                "Invalid value for argument `monitor`. Received: "
                f"monitor={self.name!r}. Expected a metric name such as "
                "'val_loss', a Monitor, or None."
            )
        check_choice("mode", self.mode, MODES)
        check_seconds("min_delta", self.min_delta)

    @property
    def direction(self) -> str:
        """ "min" or "max": the mode, with "auto" resolved from the name."""
        if self.mode != "auto":
            return self.mode
        name = (self.name or "").lower().removeprefix("val_")
        if name.endswith("loss") or "error" in name:
            return "min"
        return "max" if any(hint in name for hint in _MAX_HINTS) else "min"

    def value(self, metrics: dict | None) -> float | None:
        """The monitored value among `metrics` (None if missing or NaN)."""
        if not self.name:
            return None
        return finite_or_none((metrics or {}).get(self.name))

    def better(self, value: float | None, best: float | None) -> bool:
        """True when `value` improves on `best` by more than `min_delta`
        (any finite value improves on None; None and NaN never do)."""
        value = finite_or_none(value)
        if value is None:
            return False
        if best is None:
            return True
        if self.direction == "max":
            return value - self.min_delta > best
        return value + self.min_delta < best

    def best(self, values: Iterable[float | None]) -> float | None:
        """The best finite value of `values`, or None."""
        finite = [v for v in map(finite_or_none, values) if v is not None]
        if not finite:
            return None
        return max(finite) if self.direction == "max" else min(finite)

    def ranked(self, values: Iterable[tuple[int, float | None]]) -> list[int]:
        """The versions of `(version, value)` pairs, best value first; a tie
        goes to the newer version; missing and NaN values are left out.

        Example:

            Monitor("val_loss").ranked([(1, 0.3), (2, 0.3), (3, None)])  # [2, 1]
        """
        scored = [(v, finite_or_none(x)) for v, x in values]
        sign = -1.0 if self.direction == "max" else 1.0
        ordered = sorted(
            ((sign * x, -v) for v, x in scored if x is not None),
        )
        return [-negative for _, negative in ordered]


def as_monitor(monitor, mode: str = "auto") -> Monitor:
    """`monitor` (a name, a `Monitor` or None) as a `Monitor`."""
    if isinstance(monitor, Monitor):
        if mode != "auto":
            raise TypeError(
                f"Pass `mode` inside the Monitor, not beside it. Received: "
                f"monitor={monitor!r}, mode={mode!r}."
            )
        return monitor
    return Monitor(monitor, mode)


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """Which versions to keep, and how long dropped ones stay.

    Example:

        policy = RetentionPolicy(keep=3, keep_best=1, grace_seconds=30)
        VersionedExporter("/tmp/exports", retention=policy, monitor="val_loss")

    Args:
      keep: the newest versions to keep; None keeps all. Defaults to 5.
      keep_best: also the best this many by the exporter's monitor (NaN and
        missing values are never best). Defaults to None.
      keep_every_n_hours: also one version per this many hours (the oldest,
        then each one at least this long after the last one so kept), as
        `tf.train.CheckpointManager` does. Defaults to None.
      grace_seconds: a dropped version is deleted only once it has been
        superseded (a newer version was created) this long, so a server that
        picked it as the newest can finish loading it; 0 deletes at once.
        Defaults to 10.
      rules: more rules, each an object with `keeps(versions, monitor) ->
        set of versions` (see `retention.Rule`); a version any rule keeps
        stays. Only with a `keep` (None keeps all anyway). Defaults to ().

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
    """

    keep: int | None = 5
    keep_best: int | None = None
    keep_every_n_hours: float | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    rules: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))
        for rule in self.rules:
            if not callable(getattr(rule, "keeps", None)):
                raise TypeError(
                    f"Each of `rules` must have a method keeps(versions, "
                    f"monitor) returning the versions it keeps. Received: {rule!r}."
                )
        check_count("keep", self.keep, "keeps every version")
        check_count("keep_best", self.keep_best, "keeps no best versions")
        if self.keep_every_n_hours is not None:
            check_seconds("keep_every_n_hours", self.keep_every_n_hours, positive=True)
        check_seconds("grace_seconds", self.grace_seconds)

    def check_monitor(self, monitor: Monitor) -> None:
        """Raises ValueError when `keep_best` has no metric to rank by."""
        if self.keep_best is not None and not monitor.name:
            raise ValueError(
                f"`keep_best={self.keep_best}` needs `monitor`, the metric to "
                "rank versions by. Pass e.g. monitor='val_loss'."
            )


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What each export writes.

    Example:

        options = ExportOptions(serving_only=True, async_export=True)
        SavedModelExporter("/tmp/exports", options=options)

    Args:
      serving_only: write only the `serve` graph. Defaults to False.
      input_signature: the model's inputs as `tf.TensorSpec`s, for a model
        that is not built. Defaults to None.
      custom_objects: accepted for compatibility (loading takes them).
        Defaults to None.
      as_text: write `saved_model.pbtxt`. Defaults to False.
      target_signature: overrides the train/eval target specs. Defaults to
        None.
      warmup_inputs: serve inputs written as TF Serving warm-up requests
        into every version (the `serving` extra). Defaults to None.
      async_export: write in a background thread; `export()` returns once
        the variables are snapshot. Defaults to False.
      signatures: the serving signatures of the `serve` graph, a dict of
        key -> spec from `kerassave_callbacks.signatures` or a custom
        `tf.function`. Defaults to None (`serving_default` = `predict()`).
      validate: the publish gate: True, False or a `PublishGate`; stored
        as a `PublishGate`. Defaults to True.
      layout: where in each version directory the SavedModel goes, a
        `layout.DirectoryLayout`. Defaults to TF Serving's (the version
        directory is the SavedModel).

    Raises:
      ImportError: `warmup_inputs` without the `serving` extra.
      ValueError: `warmup_inputs` that are no batch of rows, or bad
        `signatures` (see `signatures.normalized`).
      TypeError: `signatures` that are not a dict of specs.
    """

    serving_only: bool = False
    input_signature: object = None
    custom_objects: dict | None = None
    as_text: bool = False
    target_signature: object = None
    warmup_inputs: object = None
    async_export: bool = False
    signatures: dict | None = None
    validate: object = True
    layout: DirectoryLayout = TF_SERVING

    def __post_init__(self):
        if not isinstance(self.layout, DirectoryLayout):
            raise TypeError(
                "`layout` must be a layout.DirectoryLayout. Received: "
                f"layout={self.layout!r}."
            )
        from kerassave_callbacks import signatures as signatures_lib

        object.__setattr__(
            self, "signatures", signatures_lib.normalized(self.signatures)
        )
        object.__setattr__(self, "validate", as_gate(self.validate))
        if self.warmup_inputs is not None:
            from kerassave_callbacks.core import warmup

            warmup.check(self.warmup_inputs)

    def graph_options(self) -> dict:
        """The arguments of the traced graphs (`ModeGraphs`)."""
        return dict(
            input_signature=self.input_signature,
            serving_only=self.serving_only,
            target_signature=self.target_signature,
            warmup_inputs=self.warmup_inputs,
            signatures=self.signatures,
        )


def value_of(name: str, value, cls, arguments: dict):
    """The `cls` value of a front door: `value` if given, else one built
    from the keyword arguments named like its fields (`arguments`, the
    caller's `locals()`).

    Example:

        self.retention = value_of("retention", retention, RetentionPolicy, locals())

    Raises:
      TypeError: `value` is no `cls`, or given beside a keyword it holds
        that is not at its default.
    """
    if value is not None and not isinstance(value, cls):
        raise TypeError(
            f"`{name}` must be of type {cls.__name__}. Received: {name}={value!r}."
        )
    # A field no front door has a keyword for takes its default.
    keywords = {
        f.name: arguments[f.name]
        for f in dataclasses.fields(cls)
        if f.name in arguments
    }
    if value is None:
        return cls(**keywords)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    clashes = sorted(k for k, v in keywords.items() if not _is_default(v, defaults[k]))
    if clashes:
        raise TypeError(
            f"Pass either `{name}=` or {clashes}, not both: the {cls.__name__} "
            f"holds them. Received: {name}={value!r}."
        )
    return value


def _is_default(value, default) -> bool:
    if value is default:
        return True
    return default is not None and type(value) is type(default) and value == default
