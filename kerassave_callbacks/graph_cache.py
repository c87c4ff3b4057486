"""The traced graphs of the model an exporter exports, traced once and
traced again only when the model changes."""

from __future__ import annotations

from absl import logging

from kerassave_callbacks.core import keras_api, mode_graphs, validation
from kerassave_callbacks.options import ExportOptions
from kerassave_callbacks.records import ExportError


class GraphCache:
    """One model's `ModeGraphs`, kept while the model stays the same.

    A model "changes" when its identity, variables, trainable variables,
    optimizer and its variables, metric variables or compiled state do, or
    (for graphs that use lookup tables) its resources: each would make the
    cached graphs wrong, so they are traced again.

    Example:

        cache = GraphCache(ExportOptions())
        graphs, values = cache.snapshot(model, info={})
        cache.graphs is graphs  # until the model changes

    Args:
      options: what the graphs hold (`ExportOptions.graph_options`).
    """

    def __init__(self, options: ExportOptions):
        self._options = options
        self.graphs: mode_graphs.ModeGraphs | None = None
        self._key: tuple | None = None
        # The publish gate's rows, made once per graphs.
        self._requests: tuple | None = None  # (graphs, validation.Requests)

    def for_model(self, model) -> mode_graphs.ModeGraphs:
        """The graphs of `model`, traced now if it is new or changed."""
        tables = self.graphs is not None and bool(self.graphs.resources)
        if self.graphs is None or self._key != _model_key(model, tables):
            if self.graphs is not None:
                logging.info("The model changed since the last export: retracing.")
            self.graphs = mode_graphs.ModeGraphs(model, **self._options.graph_options())
            self._key = _model_key(model, bool(self.graphs.resources))
        return self.graphs

    def snapshot(self, model, info: dict) -> tuple[mode_graphs.ModeGraphs, list]:
        """The graphs of `model` and its variable values, read now.

        Raises:
          ExportError: the graphs could not be traced (naming the innermost
            failing layer), with `info` as its export info.
        """
        try:
            graphs = self.for_model(model)
            return graphs, graphs.snapshot()
        except Exception as e:
            layer = _failing_layer(e, model)
            where = f" (in layer {layer!r})" if layer else ""
            raise ExportError(
                f"Could not build the graphs of model {model.name!r}{where}: "
                f"{type(e).__name__}: {e} Nothing was written.",
                info=info,
            ) from e

    def expectation(self, info: dict) -> tuple | None:
        """(requests, answers) of the publish gate for the cached graphs:
        the validation rows, and the model's own answers to them now; None
        when the gate is off.

        Raises:
          ExportError: the gate's rows do not fit the model (or the model
            refuses them), with `info` as its export info.
        """
        gate = self._options.validate
        if not gate.enabled:
            return None
        graphs = self.graphs
        try:
            if self._requests is None or self._requests[0] is not graphs:
                made = validation.requests(graphs, gate, self._options.warmup_inputs)
                self._requests = (graphs, made)
            requests = self._requests[1]
            return requests, validation.answers(graphs, requests)
        except Exception as e:
            raise ExportError(
                f"The publish gate cannot check model {graphs.model.name!r}: "
                f"{type(e).__name__}: {e} Nothing was written.",
                info=info,
            ) from e


def _model_key(model, tables: bool) -> tuple:
    """Changes whenever cached graphs of `model` would be wrong.

    With `tables` (the graphs use lookup tables), the identity of the
    model's resources too: re-adapting a lookup layer makes a new table.
    Walking the model for them costs a little, so only then.
    """
    adapter = keras_api.adapter_for(model)
    compiled = adapter.is_compiled(model)
    resources = mode_graphs.model_resources(model) if tables else ()
    return (
        tuple(id(r) for r in resources),
        id(model),
        tuple(id(v) for v in adapter.model_variables(model)),
        tuple(id(v) for v in model.trainable_variables),
        id(getattr(model, "optimizer", None)),
        tuple(id(v) for v in adapter.optimizer_variables(model)) if compiled else (),
        tuple(id(v) for v in adapter.metric_variables(model)),
        compiled,
    )


def _failing_layer(error: BaseException, model) -> str | None:
    """The name of the innermost layer whose code raised `error`, if any."""
    is_layer = keras_api.adapter_for(model).is_layer
    found = None
    while error is not None and found is None:
        tb = error.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if is_layer(owner) and owner is not model:
                found = owner.name
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return found
