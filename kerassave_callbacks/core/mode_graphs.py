"""Saves a model's traced functions (`tracing`) as a SavedModel, many times.

Serializing happens on the first save: the functions are saved together
with `tf.saved_model.save`, and the one MetaGraph that writes is split into
one MetaGraph per mode tag, each keeping only its own signatures
(`graph_split`). Every later save writes the cached graph bytes and the
variables' values (`SaveV2`), tracing and serializing nothing.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2

from kerassave_callbacks import _files, _fs, layout
from kerassave_callbacks.core import (
    _fingerprint,
    _heap,
    _tf_logs,
    direct_signatures,
    graph_split,
    keras_api,
    modes,
    serving_signatures,
    single_device,
    specs,
    tracing,
    warmup,
)


class ModeGraphs:
    """The traced mode functions of one model, ready to be saved many times.

    Tracing happens once, in the constructor (`tracing.trace`); `save`
    writes the model's current variable values each time it is called.
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
        inputs = specs.input_structure(model, input_signature)
        self._input_names = specs.input_names(model, input_signature)
        # Checked against the serve signature before anything is traced.
        self._warmup = _warmup_records(
            inputs, warmup_inputs, signatures, self._input_names
        )
        self._model_json = self.keras.to_json(model)
        self._layer_assets = self.keras.layer_assets(model)
        with _tf_logs.quiet(), _heap.frozen():
            self.traced = tracing.trace(
                model,
                self.keras,
                inputs,
                serving_only=serving_only,
                target_signature=target_signature,
                signatures=signatures,
                model_json=self._model_json,
                layer_assets=self._layer_assets,
            )
        self.modes = self.traced.modes
        self._object_graph = None  # Set with the graph bytes on the first save.
        self._graph_files: dict[bool, bytes] = {}  # as_text -> file contents
        # assets/ path -> bytes of what tf.saved_model.save wrote there
        # (vocabulary files of tables): known after the first save.
        self._saved_assets: dict[str, bytes] = {}
        # Optimizer slots and compiled metrics were created while tracing:
        # collect what to save only now.
        self._collect_variables()
        self._add_serve_endpoint()

    def _collect_variables(self) -> None:
        """The saved root, every variable with its checkpoint key, and where
        each value is read from when saved."""
        self.root = self._saved_root()
        # (checkpoint key, variable) of every variable the export holds.
        self._variables = self._keyed(layout.VARIABLE_GROUPS)
        self._keys = [key for key, _ in self._variables] + [layout.OBJECT_GRAPH_KEY]
        self._distributed = any(
            isinstance(v, tf.distribute.DistributedValues) for _, v in self._variables
        )
        # Where each saved value is read from: the variable itself, or the
        # model's own when the graphs are a copy's (metrics: saved as zeros).
        self._sources = [v for _, v in self._variables]
        if self.traced.traced_model is not self.model:
            self._sources = single_device.model_sources(
                self.keras, self.model, self.root, modes.TRAIN in self.modes
            )

    def _keyed(self, groups) -> list:
        """(checkpoint key, variable) of the variables of `groups` of the
        saved root."""
        return [
            (layout.variable_key(group, i), v)
            for group in groups
            for i, v in enumerate(getattr(self.root, group, []))
        ]

    def _saved_root(self) -> tf.Module:
        """The object `tf.saved_model.save` saves: the traced model's
        variables by group, and the resources its graphs use (tracked, so
        that the init op initializes them when a TF1 session or TF Serving
        loads)."""
        traced = self.traced.traced_model
        root = tf.Module()
        setattr(root, layout.MODEL_VARIABLES, self.keras.model_variables(traced))
        if modes.TRAIN in self.modes:
            setattr(
                root, layout.OPTIMIZER_VARIABLES, self.keras.optimizer_variables(traced)
            )
            setattr(root, layout.METRIC_VARIABLES, self.keras.metric_variables(traced))
        resources = _captured_resources(traced, self.traced.concrete.values())
        setattr(root, layout.RESOURCES, resources)
        return root

    def _add_serve_endpoint(self) -> None:
        """A serve-only export's root gets the predict function as `serve`,
        as Keras' `model.export()` names it, for `keras.layers.TFSMLayer`
        (TF2 reads a one-MetaGraph export natively, attributes too).

        Handed the `tf.function` (`_as_saved`), `tf.saved_model.save` would
        trace the model once more and save both traces.
        """
        if self.modes == (modes.SERVE,):
            predict = self.traced.predict
            self.root.serve = self._as_saved(predict, predict.get_concrete_function())

    @property
    def names(self) -> dict:
        """ "inputs" and "outputs" -> Keras name -> signature key, as
        `export_info.json` records them (`names.signature_key`)."""
        outputs = zip(
            self.traced.keras_output_names, self.traced.output_names, strict=True
        )
        return {"inputs": dict(self._input_names), "outputs": dict(outputs)}

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
        `values` is emptied once written: the copy is let go before the
        publish gate loads the version (its session holds one of its own).
        """
        if not self.serialized:
            with _heap.frozen():
                self._serialize_graphs(path)
        else:
            _fs.makedirs(posixpath.join(path, "variables"))
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
        values.clear()
        self._write_keras_assets(path)
        if self._warmup:
            warmup.write(path, self._warmup)
        _fingerprint.write(path)  # Of the files written, last.

    def _serialize_graphs(self, path: str) -> None:
        """Saves the traced functions with `tf.saved_model.save` into `path`
        and keeps what every save writes: the split graph, the object graph
        and the files TF wrote under `assets/`."""
        served = self._served_captures()
        direct = self._direct_signatures(served)
        unsaved = self._unsaved_groups(direct, served)
        self._tf_save(
            path,
            self._tf_root(unsaved),
            {k: f for k, f in self._to_save().items() if k not in direct},
        )
        assets = posixpath.join(path, "assets")
        if _fs.isdir(assets):
            self._saved_assets = {
                rel: _fs.read_bytes(posixpath.join(assets, rel))
                for rel in _fs.files(assets)
            }
        reader = tf.compat.v1.train.NewCheckpointReader(
            posixpath.join(path, layout.VARIABLES_PREFIX)
        )
        shapes = reader.get_variable_to_shape_map()
        unsaved_variables = self._keyed(unsaved)
        self._check_keys(set(shapes), {k for k, _ in unsaved_variables})
        shapes.update({k: v.shape.as_list() for k, v in unsaved_variables})
        pb_path = posixpath.join(path, layout.SAVED_MODEL_PB)
        saved = saved_model_pb2.SavedModel.FromString(_fs.read_bytes(pb_path))
        self._saved_model = graph_split.split_by_mode(
            saved,
            self.modes,
            shapes,
            serving=serving_signatures.method_names(self.traced.specs),
            shared_inputs=serving_signatures.shared_input_keys(self.traced.specs),
            direct=direct,
        )
        _fs.remove_file(pb_path)
        # TF fingerprints the graph it wrote; after the split that
        # fingerprint no longer describes the file: `write` makes its own.
        fingerprint = posixpath.join(path, layout.FINGERPRINT)
        if _fs.exists(fingerprint):
            _fs.remove_file(fingerprint)
        self._object_graph = tf.constant(
            _with_groups(
                reader.get_tensor(layout.OBJECT_GRAPH_KEY),
                {group: getattr(self.root, group) for group in unsaved},
            )
        )

    def _tf_save(self, path: str, root, signatures: dict) -> None:
        options = graph_split.save_options(self.modes)

        def save():
            with _tf_logs.quiet():
                tf.saved_model.save(root, path, signatures=signatures, options=options)

        try:
            if self.traced.traced_model is self.model:
                save()
            else:  # The copy's graphs, saved outside the model's strategy.
                single_device.in_a_fresh_thread(save)
        except AssertionError as e:  # TF's word for an untracked resource.
            raise ValueError(
                f"Cannot save the graphs of model {self.model.name!r}: {e}"
            ) from e

    def _served_captures(self) -> set[int]:
        """The ids of what the serve MetaGraph's signatures capture."""
        return {
            id(t)
            for key, fn in self.traced.concrete.items()
            if key not in _STEP_KEYS
            for t in fn.captured_inputs
        }

    def _unsaved_groups(self, direct: dict, served: set[int]) -> tuple[str, ...]:
        """The variable groups that only the `direct` signatures capture
        (`served`: the ids of what the others capture), of the optimizer's
        and the metrics', of fully known shapes: left out of what
        `tf.saved_model.save` saves, which would copy each into its graph
        and checkpoint it, for nothing."""
        if not direct:
            return ()
        return tuple(
            group
            for group in (layout.OPTIMIZER_VARIABLES, layout.METRIC_VARIABLES)
            if all(
                id(v.handle) not in served and v.shape.is_fully_defined()
                for v in getattr(self.root, group, [])
            )
        )

    def _tf_root(self, unsaved) -> tf.Module:
        """The root `tf.saved_model.save` gets: the saved root without the
        `unsaved` groups."""
        if not unsaved:
            return self.root
        root = tf.Module()
        for name in (*layout.VARIABLE_GROUPS, layout.RESOURCES):
            if name not in unsaved and hasattr(self.root, name):
                setattr(root, name, list(getattr(self.root, name)))
        return root

    def _direct_signatures(self, served: set[int]) -> dict:
        """Signature key -> `direct_signatures.Signature`, of the train and
        eval signatures, which the split adds to their MetaGraphs instead of
        `tf.saved_model.save`; {} when there are none, when the variables
        are distributed (saved through their `tf.function`s) or when a step
        captures a resource that no serve signature (`served`: the ids of
        what they capture) uses."""
        steps = [m for m in self.modes if m.signature_key in _STEP_KEYS]
        if not steps or self._distributed:
            return {}
        variables = {id(v.handle): (key, v) for key, v in self._variables}
        resources = {
            id(r.resource_handle): direct_signatures.Resource(
                graph_split.object_path(layout.RESOURCES, str(i))
            )
            for i, r in enumerate(self.resources)
            if id(r.resource_handle) in served
        }
        out = {
            mode.signature_key: direct_signatures.describe(
                mode.signature_key,
                mode.method_name,
                self.traced.concrete[mode.signature_key],
                variables,
                resources,
            )
            for mode in steps
        }
        return {} if None in out.values() else out

    def _check_keys(self, written: set[str], unsaved: set[str]) -> None:
        """Raises ValueError unless TF's checkpoint holds exactly the keys
        every later save writes, but the `unsaved` ones."""
        expected = set(self._keys) - unsaved
        if written != expected:
            raise ValueError(
                f"Cannot export model {self.model.name!r}: its graphs use state "
                "that is not in its variables (a mutable lookup table, say), "
                f"saved under checkpoint keys {sorted(written ^ expected)}. "
                "Keep such state in variables or in tf.lookup.StaticHashTable."
            )

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
        """The signatures as `tf.saved_model.save` gets them (`_as_saved`)."""
        return {
            key: self._as_saved(function, self.traced.concrete[key])
            for key, function in self.traced.functions.items()
        }

    def _as_saved(self, function, concrete):
        """`function` as `tf.saved_model.save` gets it: `concrete`, its
        concrete function, already traced, so that saving does not trace
        the model again (that doubled the first export's time); but the
        `tf.function` when the variables are distributed (e.g.
        MirroredStrategy), since a concrete function that captured those
        cannot be saved."""
        return function if self._distributed else concrete

    def _write_keras_assets(self, path: str) -> None:
        assets = posixpath.join(path, "assets")
        _fs.makedirs(assets)
        if self._model_json is not None:
            _fs.write_bytes(
                posixpath.join(path, layout.MODEL_JSON), self._model_json.encode()
            )
        _files.write_tree(
            posixpath.join(assets, layout.LAYER_ASSETS), self._layer_assets
        )


def _with_groups(object_graph: bytes, groups: dict) -> bytes:
    """`object_graph` (TF's checkpoint object graph, serialized) with the
    variable `groups` (group -> variables) it lacks: a list node per group
    under the root and a node per variable with its value's key, as TF
    writes them, so that `tf.train.Checkpoint` restores them too."""
    if not groups:
        return object_graph
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(object_graph)
    for group, variables in groups.items():
        listing = _object_node(graph, graph.nodes[0], group)
        for i, variable in enumerate(variables):
            _object_node(graph, listing, str(i)).attributes.add(
                name="VARIABLE_VALUE",
                full_name=direct_signatures.variable_name(variable),
                checkpoint_key=layout.variable_key(group, i),
            )
    return graph.SerializeToString()


def _object_node(graph, parent, name: str):
    """A new node of `graph`, the child `name` of `parent`."""
    parent.children.add(node_id=len(graph.nodes), local_name=name)
    node = graph.nodes.add()
    node.has_checkpoint_values.value = True
    return node


# The signatures of the train and eval steps (the others are the serve
# MetaGraph's).
_STEP_KEYS = frozenset({modes.TRAIN.signature_key, modes.EVAL.signature_key})


def _warmup_records(inputs, warmup_inputs, signatures, names) -> list[bytes]:
    """The serialized warm-up requests of `warmup_inputs` ([] for None)."""
    if warmup_inputs is None:
        return []
    return warmup.records(inputs, warmup_inputs, _default_spec(signatures), names)


def _default_spec(signatures):
    """The spec of `serving_default`, which warm-up requests target."""
    return (signatures or {}).get(modes.SERVE.signature_key)


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


def to_text(saved: saved_model_pb2.SavedModel) -> bytes:
    return text_format.MessageToString(saved).encode("utf-8")
