"""Traces a Keras model's train / eval / serve graphs and saves them.

TensorFlow 2.21 with Keras 3 has no graph mode for Keras, so the mode graphs
of the old `tf.keras.experimental.export_saved_model` are rebuilt on TF2
tracing: each mode is a `tf.function` traced once, saved together with
`tf.saved_model.save`, and the one MetaGraph that writes is then split into
one MetaGraph per mode tag, each keeping only its own signature
(`graph_split`).
"""

from __future__ import annotations

import posixpath

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from kerassave_callbacks import _files, _fs, layout
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import (
    _fingerprint,
    _tf_logs,
    graph_split,
    keras_api,
    modes,
    serving_signatures,
    single_device,
    specs,
    warmup,
)


class ModeGraphs:
    """The traced mode functions of one model, ready to be saved many times.

    Tracing happens once, in the constructor; `save` writes the model's
    current variable values each time it is called.
    """

    def __init__(
        self,
        model,
        *,
        input_signature=None,
        serving_only: bool = False,
        target_signature=None,
        warmup_inputs=None,
        signatures=None,
    ):
        self.model = model
        self.keras = keras_api.adapter_for(model)
        self.inputs = specs.input_structure(model, input_signature)
        # Serving signature key -> spec (`signatures.normalized`; None: the
        # model's predict signature alone).
        self._specs = signatures
        # Checked against the serve signature before anything is traced.
        self._warmup = (
            warmup.records(self.inputs, warmup_inputs, self._default_spec())
            if warmup_inputs is not None
            else []
        )
        self._input_specs = tf.nest.flatten(self.inputs)
        self.output_names: list[str] = []  # Known once `serve` is traced.
        self._output_keys: list[str] | None = None  # Raw keys of dict outputs.
        self.modes = (modes.SERVE,)
        self._model_json = self.keras.to_json(model)
        self._layer_assets = self.keras.layer_assets(model)
        # The model whose graphs are traced: `model`, or a single-device copy
        # of it (`single_device`).
        self.traced_model = model
        with _tf_logs.quiet():
            # Signature key -> traced function, of every MetaGraph.
            self.signatures = self._trace(serving_only, target_signature)
        self._object_graph = None  # Set with the graph bytes on the first save.
        self._graph_files: dict[bool, bytes] = {}  # as_text -> file contents
        # assets/ path -> bytes of what tf.saved_model.save wrote there
        # (vocabulary files of tables): known after the first save.
        self._saved_assets: dict[str, bytes] = {}
        # Optimizer slots and compiled metrics are created while tracing:
        # collect what to save only now.
        traced = self.traced_model
        self.root = self._saved_root(traced)
        # (checkpoint key, variable) of every variable the export holds.
        self._variables = [
            (layout.variable_key(group, i), v)
            for group in layout.VARIABLE_GROUPS
            for i, v in enumerate(getattr(self.root, group, []))
        ]
        self._keys = [key for key, _ in self._variables] + [layout.OBJECT_GRAPH_KEY]
        self._distributed = any(
            isinstance(v, tf.distribute.DistributedValues) for _, v in self._variables
        )
        # Where each saved value is read from: the variable itself, or the
        # model's own when the graphs are a copy's (metrics: saved as zeros).
        self._sources = [v for _, v in self._variables]
        if traced is not model:
            self._sources = single_device.model_sources(
                self.keras, self.model, self.root, modes.TRAIN in self.modes
            )

    def _saved_root(self, traced) -> tf.Module:
        """The object `tf.saved_model.save` saves: the traced model's
        variables by group, and the resources its graphs use (tracked, so
        that the init op initializes them when a TF1 session or TF Serving
        loads)."""
        root = tf.Module()
        setattr(root, layout.MODEL_VARIABLES, self.keras.model_variables(traced))
        if modes.TRAIN in self.modes:
            setattr(
                root, layout.OPTIMIZER_VARIABLES, self.keras.optimizer_variables(traced)
            )
            setattr(root, layout.METRIC_VARIABLES, self.keras.metric_variables(traced))
        resources = _captured_resources(traced, self._concrete.values())
        setattr(root, layout.RESOURCES, resources)
        if self.modes == (modes.SERVE,):
            # As Keras' model.export() names it, for keras.layers.TFSMLayer
            # (TF2 reads a one-MetaGraph export natively, attributes too).
            root.serve = self._predict
        return root

    def _default_spec(self):
        """The spec of `serving_default`, which warm-up requests target."""
        return (self._specs or {}).get(modes.SERVE.signature_key)

    def _trace(self, serving_only: bool, target_signature) -> dict:
        """Traces the mode functions; sets `self.modes`."""
        model = self.model
        training = (
            not serving_only
            and self.keras.is_compiled(model)
            and _trains_as_keras(model, self.keras)
        )
        if training and self.keras.steps_only_on_a_copy(model):
            _check_no_endpoints(model, self._specs)
            # The model's own slots too: every export saves its values.
            self.keras.build_optimizer(model)
            copy = single_device.copy_of(
                self.keras, model, self._model_json, self._layer_assets
            )
            if copy is not None:
                self.traced_model = copy
                # Outside the strategy's scope, which is thread-local.
                return single_device.in_a_fresh_thread(
                    lambda: self._trace_modes(True, target_signature)
                )
            training = False
        return self._trace_modes(training, target_signature)

    def _trace_modes(self, training: bool, target_signature) -> dict:
        """Traces the serving signatures, and with `training` the train and
        eval functions, of `traced_model`."""
        model = self.traced_model
        self._predict = self._trace_serve()
        outputs = self._predict.get_concrete_function().structured_outputs
        functions = serving_signatures.build(
            self._specs or {modes.SERVE.signature_key: signatures_lib.predict()},
            inputs=self.inputs,
            predict=self._predict,
            output_specs={
                n: tf.TensorSpec(t.shape, t.dtype) for n, t in outputs.items()
            },
            model=self.model,
        )
        if training:
            self._targets = specs.target_specs(
                model,
                self.output_names,
                [outputs[n] for n in self.output_names],
                target_signature,
                loss_keys=self._output_keys,
                input_names=[s.name for s in self._input_specs],
            )
            _check_not_in_strategy_scope(model)
            self.keras.build_optimizer(model)
            functions[modes.TRAIN.signature_key] = self._trace_step(training=True)
            functions[modes.EVAL.signature_key] = self._trace_step(training=False)
            self.modes = (modes.SERVE, modes.TRAIN, modes.EVAL)
        # Their concrete functions, taken in the thread that traced them: in
        # another context (a strategy's scope) a tf.function traces anew.
        self._concrete = {k: f.get_concrete_function() for k, f in functions.items()}
        return functions

    def _call_inputs(self, flat_args):
        return tf.nest.pack_sequence_as(self.inputs, list(flat_args))

    def _named_outputs(self, outputs) -> dict:
        return dict(zip(self.output_names, tf.nest.flatten(outputs), strict=True))

    def _trace_serve(self):
        def serve(*args):
            outputs = self.traced_model(self._call_inputs(args), training=False)
            if not self.output_names:
                self.output_names = specs.output_names(self.model, outputs)
                if isinstance(outputs, dict):
                    self._output_keys = [str(k) for k in sorted(outputs)]
            return self._named_outputs(outputs)

        return _traced(serve, self._input_specs)

    def _pack_targets(self, flat_targets, outputs):
        if isinstance(outputs, dict):
            return dict(zip(sorted(outputs), flat_targets, strict=True))
        return tf.nest.pack_sequence_as(outputs, list(flat_targets))

    def _trace_step(self, training: bool):
        model = self.traced_model
        n_inputs = len(self._input_specs)

        def step(*args):
            x = self._call_inputs(args[:n_inputs])
            loss, y_pred, metrics = self.keras.step(
                model,
                x,
                lambda y_pred: self._pack_targets(args[n_inputs:], y_pred),
                training,
            )
            results = {modes.LOSS_KEY: loss}
            for name, value in self._named_outputs(y_pred).items():
                results[modes.PREDICTIONS_PREFIX + name] = value
            for name, value in metrics.items():
                if name != modes.LOSS_KEY:
                    key = modes.METRICS_PREFIX + name + modes.METRIC_VALUE_SUFFIX
                    results[key] = value
            return results

        signature = self._input_specs + self._targets
        return _traced(step, signature)

    @property
    def serialized(self) -> bool:
        """True once the graphs were serialized (by the first save)."""
        return self._object_graph is not None

    def snapshot(self) -> list[tf.Tensor]:
        """The values to save, read now: later training does not change them.

        Metric variables are saved at their reset state (zeros), so metrics
        of a loaded eval or train graph stream from zero within one session,
        as TF1 streaming metrics did.
        """
        metric_ids = {id(v) for v in getattr(self.root, layout.METRIC_VARIABLES, [])}
        return [
            tf.zeros_like(v) if id(v) in metric_ids else source.read_value()
            for (_, v), source in zip(self._variables, self._sources, strict=True)
        ]

    def save(self, path: str, *, as_text: bool = False) -> None:
        """Writes a SavedModel of the current variable values to `path`."""
        self.write(path, self.snapshot(), as_text=as_text)

    def write(self, path: str, values: list[tf.Tensor], *, as_text: bool) -> None:
        """Writes a SavedModel holding `values` (from `snapshot`) to `path`.

        The graphs are serialized by `tf.saved_model.save` on the first call
        only; later calls write the cached graph bytes and the variables.
        """
        if not self.serialized:
            self._serialize_graphs(path)
        else:
            tf.io.gfile.makedirs(posixpath.join(path, "variables"))
            _files.write_tree(posixpath.join(path, "assets"), self._saved_assets)
        name = layout.SAVED_MODEL_PBTXT if as_text else layout.SAVED_MODEL_PB
        if as_text not in self._graph_files:
            self._graph_files[as_text] = (
                to_text(self._saved_model)
                if as_text
                else self._saved_model.SerializeToString()
            )
        _fs.write_bytes(posixpath.join(path, name), self._graph_files[as_text])
        tf.raw_ops.SaveV2(
            prefix=posixpath.join(path, layout.VARIABLES_PREFIX),
            tensor_names=self._keys,
            shape_and_slices=[""] * len(self._keys),
            tensors=values + [self._object_graph],
        )
        self._write_keras_assets(path)
        if self._warmup:
            warmup.write(path, self._warmup)
        _fingerprint.write(path)  # Of the files written, last.

    def _serialize_graphs(self, path: str) -> None:
        options = graph_split.save_options(self.modes)

        def save():
            with _tf_logs.quiet():
                tf.saved_model.save(
                    self.root, path, signatures=self._to_save(), options=options
                )

        try:
            if self.traced_model is self.model:
                save()
            else:  # The copy's graphs, saved outside the model's strategy.
                single_device.in_a_fresh_thread(save)
        except AssertionError as e:  # TF's word for an untracked resource.
            raise ValueError(
                f"Cannot save the graphs of model {self.model.name!r}: {e}"
            ) from e
        assets = posixpath.join(path, "assets")
        if tf.io.gfile.isdir(assets):
            self._saved_assets = {
                rel: _fs.read_bytes(posixpath.join(assets, rel))
                for rel in _files.list_files(assets)
            }
        reader = tf.compat.v1.train.NewCheckpointReader(
            posixpath.join(path, layout.VARIABLES_PREFIX)
        )
        shapes = reader.get_variable_to_shape_map()
        expected = set(self._keys)
        written = set(shapes)
        if written != expected:
            raise ValueError(
                f"Cannot export model {self.model.name!r}: its graphs use state "
                "that is not in its variables (a mutable lookup table, say), "
                f"saved under checkpoint keys {sorted(written ^ expected)}. "
                "Keep such state in variables or in tf.lookup.StaticHashTable."
            )
        pb_path = posixpath.join(path, layout.SAVED_MODEL_PB)
        with tf.io.gfile.GFile(pb_path, "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
        self._saved_model = graph_split.split_by_mode(
            saved,
            self.modes,
            shapes,
            serving=serving_signatures.method_names(self._specs),
            shared_inputs=serving_signatures.shared_input_keys(self._specs),
        )
        tf.io.gfile.remove(pb_path)
        # TF fingerprints the graph it wrote; after the split that
        # fingerprint no longer describes the file: `write` makes its own.
        fingerprint = posixpath.join(path, layout.FINGERPRINT)
        if tf.io.gfile.exists(fingerprint):
            tf.io.gfile.remove(fingerprint)
        self._object_graph = tf.constant(reader.get_tensor(layout.OBJECT_GRAPH_KEY))

    @property
    def saves_without_tracing(self) -> bool:
        """True when writing (the first time too) traces no model code, so it
        may run in another thread while the model trains."""
        return self.serialized or not self._distributed

    @property
    def resources(self) -> list:
        """The lookup tables and other resources the graphs use."""
        return getattr(self.root, layout.RESOURCES)

    def _to_save(self) -> dict:
        """The signatures as `tf.saved_model.save` gets them.

        Their concrete functions, already traced, so that saving does not
        trace the model again (that doubled the first export's time); but
        the `tf.function`s when the variables are distributed (e.g.
        MirroredStrategy), since a concrete function that captured those
        cannot be saved.
        """
        if self._distributed:
            return self.signatures
        return self._concrete

    def _write_keras_assets(self, path: str) -> None:
        assets = posixpath.join(path, "assets")
        tf.io.gfile.makedirs(assets)
        if self._model_json is not None:
            _fs.write_bytes(
                posixpath.join(path, layout.MODEL_JSON), self._model_json.encode()
            )
        _files.write_tree(
            posixpath.join(assets, layout.LAYER_ASSETS), self._layer_assets
        )


def model_resources(model) -> list:
    """Every resource (lookup table...) the model tracks."""
    return [
        obj
        for obj in tf.train.TrackableView(model).descendants()
        if isinstance(obj, tf.saved_model.experimental.TrackableResource)
    ]


def _captured_resources(model, concrete_functions) -> list:
    """The resources of the model that the traced graphs use."""
    captured = {id(t) for fn in concrete_functions for t in fn.captured_inputs}
    return [r for r in model_resources(model) if id(r.resource_handle) in captured]


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


def _check_no_endpoints(model, specs) -> None:
    """A custom endpoint calls the model itself, but the graphs of a model
    with distributed variables are traced on a single-device copy."""
    endpoints = [k for k, s in (specs or {}).items() if signatures_lib.is_endpoint(s)]
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


def to_text(saved: saved_model_pb2.SavedModel) -> bytes:
    return text_format.MessageToString(saved).encode("utf-8")
