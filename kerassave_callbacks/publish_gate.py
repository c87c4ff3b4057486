"""The publish gate's settings: what a version must pass before it gets
its integer name (the checks themselves are `core.validation`). A leaf: no
TensorFlow, no Keras.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from kerassave_callbacks._checks import check_count, check_seconds

if TYPE_CHECKING:
    from kerassave_callbacks.options import Monitor


@dataclasses.dataclass(frozen=True)
class PublishGate:
    """What a version must pass before it gets its integer name.

    The staged version is loaded from disk as TF Serving loads it (tag
    `serve`, a fresh graph and session), its warm-up requests are replayed
    as TF Serving replays them, and every serve signature is run on
    validation rows and its answers compared with the model's own
    `model(x, training=False)`. A version that fails is kept as
    `rejected-<version>` with its reasons, and the export fails with
    `ExportRejectedError`.

    Example:

        gate = PublishGate(inputs=x_val[:8], metric_margin=0.01)
        SavedModelExporter("/tmp/exports", monitor="val_loss", validate=gate)

    Args:
      enabled: run the gate. Defaults to True.
      inputs: validation rows (as `model.predict` takes them: an array, a
        list or a dict of arrays); None uses the warm-up rows, or else rows
        drawn from the model's input specs. At most `MAX_ROWS` are used.
        Defaults to None.
      rtol: relative tolerance of the comparison with the model; None:
        1e-4, or 2e-2 under a float16/bfloat16 policy. Defaults to None.
      atol: absolute tolerance; None: 1e-5, or 1e-2 under a float16/bfloat16
        policy. Defaults to None.
      metric_margin: publish only when the monitored metric is not worse
        than the best published version's by more than this (None: no
        metric gate). Defaults to None.
      load_seconds: a version that takes longer to load is rejected.
        Defaults to 300.
      keep_rejected: how many `rejected-<version>` copies to keep, newest
        first (0 keeps none). Defaults to 3.

    Raises:
      TypeError, ValueError: a bad argument, named in the message.
    """

    MAX_ROWS = 32

    enabled: bool = True
    inputs: object = None
    rtol: float | None = None
    atol: float | None = None
    metric_margin: float | None = None
    load_seconds: float = 300.0
    keep_rejected: int = 3

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise TypeError(
                "Invalid value for argument `enabled`. Received: "
                f"enabled={self.enabled!r}. Expected True or False."
            )
        for name in ("rtol", "atol", "metric_margin"):
            if getattr(self, name) is not None:
                check_seconds(name, getattr(self, name))
        check_seconds("load_seconds", self.load_seconds, positive=True)
        check_count("keep_rejected", self.keep_rejected, minimum=0)

    def tolerances(self, low_precision: bool) -> tuple[float, float]:
        """(rtol, atol) of the comparison with the model."""
        rtol, atol = (2e-2, 1e-2) if low_precision else (1e-4, 1e-5)
        return (
            rtol if self.rtol is None else self.rtol,
            atol if self.atol is None else self.atol,
        )

    def metric_problem(
        self, monitor: Monitor, metrics: dict | None, best: float | None
    ) -> str | None:
        """Why the metric gate refuses `metrics`, or None when it passes
        (no margin, no monitored value or no best to compare with)."""
        value = monitor.value(metrics)
        if self.metric_margin is None or value is None or best is None:
            return None
        sign = 1.0 if monitor.direction == "max" else -1.0
        if sign * (value - best) >= -self.metric_margin:
            return None
        return (
            f"{monitor.name}={value:.6g} is worse than the best published "
            f"version's {best:.6g} by more than metric_margin={self.metric_margin}"
        )


def as_gate(validate) -> PublishGate:
    """`validate` (True, False or a `PublishGate`) as a `PublishGate`.

    Raises:
      TypeError: anything else.
    """
    if isinstance(validate, PublishGate):
        return validate
    if isinstance(validate, bool):
        return PublishGate(enabled=validate)
    raise TypeError(
        f"Invalid value for argument `validate`. Received: validate={validate!r}. "
        "Expected True, False or a PublishGate, e.g. "
        "validate=PublishGate(rtol=1e-3)."
    )
