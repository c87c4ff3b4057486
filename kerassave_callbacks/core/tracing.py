"""Tracing: a Keras model's serve, train and eval functions, traced once.

`trace` returns a `Traced` bundle, fixed from then on: the `tf.function`s of
every signature (key -> function) and what the writer needs to save them.
Saving and writing are `mode_graphs`' job.

TensorFlow 2.21 with Keras 3 has no graph mode for Keras, so the mode graphs
of the old `tf.keras.experimental.export_saved_model` are rebuilt on TF2
tracing: each mode is a `tf.function` traced without autograph, as Keras
traces its own train step.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import tensorflow as tf
from absl import logging

from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import (
    modes,
    names,
    serving_signatures,
    single_device,
    specs,
)


@dataclasses.dataclass(frozen=True)
class Traced:
    """The traced functions of one model (read-only).

    Attributes:
      model: the model exported.
      traced_model: the model whose functions were traced: `model`, or a
        single-device copy of it (`single_device`).
      inputs: the model's inputs, named `tf.TensorSpec`s.
      output_names: the signature keys of the model's outputs.
      keras_output_names: the Keras names of the outputs, in the order of
        `output_names` (`names.signature_key` maps one to the other).
      modes: the modes traced, `modes.SERVE` first.
      functions: signature key -> `tf.function`, of every MetaGraph.
      concrete: signature key -> its concrete function, taken in the thread
        that traced it (in another context, a strategy's scope, a
        `tf.function` traces anew).
      predict: the model's predict function (inputs -> named outputs).
      specs: serving signature key -> spec, or None for the default.
    """

    model: object
    traced_model: object
    inputs: object
    output_names: tuple[str, ...]
    keras_output_names: tuple[str, ...]
    modes: tuple[modes.Mode, ...]
    functions: Mapping
    concrete: Mapping
    predict: object
    specs: Mapping | None


def trace(
    model,
    adapter,
    inputs,
    *,
    serving_only: bool,
    target_signature,
    signatures: Mapping | None,
    model_json: str | None,
    layer_assets: dict,
) -> Traced:
    """Traces `model`'s serving signatures, and its train and eval steps
    when it is compiled to train as Keras does and `serving_only` is off.

    A model whose variables are distributed gets its steps traced on a
    single-device copy (built from `model_json` and `layer_assets`), in a
    thread of its own, outside the strategy's scope.

    Raises:
      ValueError: the model overrides `train_step`/`test_step`, a
        signature does not fit the model, or custom endpoints meet a copy.
    """
    training = (
        not serving_only
        and adapter.is_compiled(model)
        and _trains_as_keras(model, adapter)
    )
    tracer = _Tracer(model, adapter, inputs, signatures)
    if training and adapter.steps_only_on_a_copy(model):
        _check_no_endpoints(model, signatures)
        # The model's own slots too: every export saves its values.
        adapter.build_optimizer(model)
        copy = single_device.copy_of(adapter, model, model_json, layer_assets)
        if copy is not None:
            tracer.traced_model = copy
            return single_device.in_a_fresh_thread(
                lambda: tracer.trace(True, target_signature)
            )
        training = False
    return tracer.trace(training, target_signature)


class _Tracer:
    """The state of one tracing: what the traced functions learn as they are
    traced (the output names), turned into a `Traced` at the end."""

    def __init__(self, model, adapter, inputs, signatures):
        self.model = model
        self.traced_model = model
        self.keras = adapter
        self.inputs = inputs
        self.specs = signatures
        self.input_specs = tf.nest.flatten(inputs)
        self.output_names: list[str] = []  # Known once predict is traced.
        self.output_keys: list[str] = []  # Their Keras names.
        self.output_structure = None  # The model's outputs, as it nests them.
        self.masked = False  # Whether an output carries a Keras mask.

    def trace(self, training: bool, target_signature) -> Traced:
        predict = self._trace_predict()
        outputs = predict.get_concrete_function().structured_outputs
        functions = serving_signatures.build(
            self.specs or {modes.SERVE.signature_key: signatures_lib.predict()},
            inputs=self.inputs,
            predict=predict,
            output_specs={
                n: tf.TensorSpec(t.shape, t.dtype) for n, t in outputs.items()
            },
            model=self.model,
        )
        mode_list = (modes.SERVE,)
        if training:
            targets = specs.target_specs(
                self.traced_model,
                self.output_names,
                [outputs[n] for n in self.output_names],
                target_signature,
                loss_keys=self.output_keys,
                input_names=[s.name for s in self.input_specs],
            )
            _check_not_in_strategy_scope(self.traced_model)
            self.keras.build_optimizer(self.traced_model)
            functions[modes.TRAIN.signature_key] = self._trace_step(True, targets)
            functions[modes.EVAL.signature_key] = self._trace_step(
                False, targets, None if self.masked else predict
            )
            mode_list = (modes.SERVE, modes.TRAIN, modes.EVAL)
        return Traced(
            model=self.model,
            traced_model=self.traced_model,
            inputs=self.inputs,
            output_names=tuple(self.output_names),
            keras_output_names=tuple(self.output_keys),
            modes=mode_list,
            functions=types.MappingProxyType(functions),
            concrete=types.MappingProxyType(
                {k: f.get_concrete_function() for k, f in functions.items()}
            ),
            predict=predict,
            specs=self.specs,
        )

    def _call_inputs(self, flat_args):
        return tf.nest.pack_sequence_as(self.inputs, list(flat_args))

    def _keras_outputs(self, named: dict):
        """The serve function's named outputs, nested as the model nests them."""
        flat = [named[name] for name in self.output_names]
        return tf.nest.pack_sequence_as(self.output_structure, flat)

    def _named_outputs(self, outputs) -> dict:
        return dict(zip(self.output_names, tf.nest.flatten(outputs), strict=True))

    def _trace_predict(self):
        def serve(*args):
            outputs = self.traced_model(self._call_inputs(args), training=False)
            if not self.output_names:
                self.output_keys = specs.output_names(self.model, outputs)
                self.output_names = names.signature_keys(self.output_keys, "output")
                self.output_structure = outputs
                self.masked = any(
                    getattr(t, "_keras_mask", None) is not None
                    for t in tf.nest.flatten(outputs)
                )
            return self._named_outputs(outputs)

        return _traced(serve, self.input_specs)

    def _trace_step(self, training: bool, targets: list[tf.TensorSpec], predict=None):
        """The train or eval step. With `predict` (eval, when no output is
        masked) the predictions are a call of the serve function, traced
        already: the same ops (`training=False`), traced and saved once."""
        model = self.traced_model
        n_inputs = len(self.input_specs)

        def step(*args):
            x = self._call_inputs(args[:n_inputs])

            def predicted(_):
                return self._keras_outputs(predict(*args[:n_inputs]))

            loss, y_pred, metrics = self.keras.step(
                model,
                x,
                lambda y_pred: _pack_targets(args[n_inputs:], y_pred),
                training,
                predicted if predict is not None else None,
            )
            results = {modes.LOSS_KEY: loss}
            for name, value in self._named_outputs(y_pred).items():
                results[modes.PREDICTIONS_PREFIX + name] = value
            for name, value in metrics.items():
                if name != modes.LOSS_KEY:
                    key = modes.METRICS_PREFIX + name + modes.METRIC_VALUE_SUFFIX
                    results[key] = value
            return results

        traced = _traced(step, self.input_specs + targets)
        if predict is not None and _captures_graph_tensors(traced):
            # The forward pass adds losses (activity regularizers, add_loss)
            # that the loss reads: they exist only where the model is called.
            return self._trace_step(training, targets)
        return traced


def _pack_targets(flat_targets, outputs):
    if isinstance(outputs, dict):
        return dict(zip(sorted(outputs), flat_targets, strict=True))
    return tf.nest.pack_sequence_as(outputs, list(flat_targets))


def _captures_graph_tensors(fn) -> bool:
    """True when `fn`'s graph captured a tensor of another function's graph
    (not a variable or a constant): it cannot be saved."""
    captures = fn.get_concrete_function().graph.external_captures
    return any(tf.is_symbolic_tensor(t) for t in captures)


def _traced(fn, input_signature):
    """`fn` as a `tf.function`, traced now (creating lazy optimizer and
    metric variables).

    Without autograph, as Keras traces its own train step and
    `model.export()` its serving function: the graphs hold the ops `fit`
    runs.

    The `tf.function` itself is kept: under a distribution strategy it is
    what gets saved (see `ModeGraphs._to_save`).
    """
    fn = tf.function(fn, input_signature=input_signature, autograph=False)
    fn.get_concrete_function()
    return fn


def _trains_as_keras(model, adapter) -> bool:
    """Whether the train and eval graphs can repeat what `fit` does.

    They run Keras' own step (`compute_loss`, the optimizer, the compiled
    metrics). A model whose `train_step` or `test_step` is its own is
    refused, since a graph that trains differently from `fit` would be
    silently wrong; a model compiled with no loss gets only the serve graph,
    with a warning.

    Raises:
      ValueError: `train_step` or `test_step` is overridden.
    """
    for method in ("train_step", "test_step"):
        owner = adapter.overrides(model, method)
        if owner is not None:
            raise ValueError(
                f"Model {model.name!r} overrides `{method}` in {owner}, so the "
                "train and eval graphs, which run Keras' own step, would train "
                "differently from fit(). Pass serving_only=True to export only "
                "the serve graph."
            )
    if not adapter.has_loss(model):
        logging.warning(
            "Model %r is compiled with no loss, so its export has only the "
            "serve graph (a train graph would have nothing to minimize). "
            "Pass a loss to compile(), or serving_only=True to silence this.",
            model.name,
        )
        return False
    return True


def _check_no_endpoints(model, signatures) -> None:
    """A custom endpoint calls the model itself, but the graphs of a model
    with distributed variables are traced on a single-device copy."""
    endpoints = [
        k for k, s in (signatures or {}).items() if signatures_lib.is_endpoint(s)
    ]
    if endpoints:
        raise ValueError(
            f"Cannot export the custom endpoints {endpoints} with the train and "
            f"eval graphs of model {model.name!r}, whose variables are "
            "distributed: those graphs are traced on a single-device copy that "
            "the endpoints do not call. Pass serving_only=True, or use the "
            "built-in signatures."
        )


def _check_not_in_strategy_scope(model) -> None:
    """The train graph cannot be traced inside `strategy.scope()`.

    There Keras' optimizer wants a replica context; outside the scope the
    model keeps its distributed variables and traces fine.
    """
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        raise ValueError(
            f"Cannot export the train and eval graphs of model {model.name!r} "
            "inside `strategy.scope()`. Export outside the `with "
            "strategy.scope():` block (the model keeps its distributed "
            "variables), or pass serving_only=True."
        )
