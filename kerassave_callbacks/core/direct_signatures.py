"""The train and eval signatures, added to their MetaGraphs straight from
their concrete functions instead of through `tf.saved_model.save`.

`tf.saved_model.save` traces a wrapper function for every signature and
calls it in the graph it writes with every captured variable as an input,
after copying each variable into that graph: for a train step, which
captures the model's, the optimizer's and the metrics' variables, that was
most of the save (ResNet50: 2.8-3.5 s with every signature, 1.1 s with the
serve ones alone; `docs/benchmarks.md`). Here a
signature is what such a save leaves of it after the split: a placeholder
per input, one `StatefulPartitionedCall` of the traced function itself, its
outputs as the signature's outputs, and as the call's captured inputs:

- a `VarHandleOp` for each variable, made here (the MetaGraph's saver,
  `graph_savers`, restores it by its checkpoint key);
- the lookup tables that `tf.saved_model.save` made for the serve
  signatures, which the init op initializes (found through the object
  graph by `graph_split`);
- a `Const` for each captured constant.

`describe` reads a concrete function (TF objects) into a `Signature` of
protos; `add` writes one into a MetaGraph (protos only). A function that
captures anything else (a table no serve signature uses) is left to
`tf.saved_model.save`: `describe` returns None.
"""

from __future__ import annotations

import dataclasses
import re

import tensorflow as tf
from tensorflow.core.framework import (
    attr_value_pb2,
    function_pb2,
    node_def_pb2,
    tensor_pb2,
    tensor_shape_pb2,
)
from tensorflow.core.protobuf import meta_graph_pb2

from kerassave_callbacks.core import graph_compaction, graph_savers

_CALL_OP = "StatefulPartitionedCall"
# What a node name may not hold (TF: [A-Za-z0-9.][A-Za-z0-9_.\-/>]*).
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.\-/>]")


@dataclasses.dataclass(frozen=True)
class Variable:
    """A captured variable: its checkpoint key and what its node needs."""

    key: str
    name: str
    dtype: int
    shape: tensor_shape_pb2.TensorShapeProto


@dataclasses.dataclass(frozen=True)
class Resource:
    """A captured resource that the serve signatures use too: its path in
    the saved object graph (`graph_split` finds its node)."""

    path: str


@dataclasses.dataclass(frozen=True)
class Constant:
    """A captured tensor value."""

    value: tensor_pb2.TensorProto


@dataclasses.dataclass(frozen=True)
class Signature:
    """One signature, as protos: what `add` writes into a MetaGraph.

    Attributes:
      key: the signature key.
      method_name: its method name.
      function: the name of the function the signature calls.
      library: that function and every function it calls.
      inputs: (input key, dtype, shape) in the function's argument order.
      outputs: (output key, dtype, shape) in the function's output order.
      captures: what the function takes after its arguments, in order.
    """

    key: str
    method_name: str
    function: str
    library: function_pb2.FunctionDefLibrary
    inputs: tuple
    outputs: tuple
    captures: tuple


def describe(key: str, method_name: str, concrete, variables: dict, resources: dict):
    """The `Signature` of `concrete`, or None when it captures a resource
    that is neither in `variables` nor in `resources`.

    Args:
      key: the signature key.
      method_name: its method name.
      concrete: the traced concrete function.
      variables: id of a variable's handle -> (checkpoint key, variable).
      resources: id of a resource's handle -> its `Resource`, for the
        resources the serve signatures capture.
    """
    captures = []
    for tensor in concrete.captured_inputs:
        if id(tensor) in variables:
            checkpoint_key, variable = variables[id(tensor)]
            captures.append(_variable(checkpoint_key, variable))
        elif id(tensor) in resources:
            captures.append(resources[id(tensor)])
        elif tensor.dtype != tf.resource:
            captures.append(Constant(tf.make_tensor_proto(tensor.numpy())))
        else:
            return None
    graph = tf.Graph()
    concrete.add_to_graph(graph)
    specs = tf.nest.flatten(concrete.structured_input_signature)
    outputs = concrete.structured_outputs
    return Signature(
        key=key,
        method_name=method_name,
        function=concrete.function_def.signature.name,
        library=graph.as_graph_def().library,
        inputs=tuple((s.name, *_dtype_and_shape(s)) for s in specs),
        outputs=tuple((k, *_dtype_and_shape(outputs[k])) for k in sorted(outputs)),
        captures=tuple(captures),
    )


def _variable(key: str, variable) -> Variable:
    return Variable(
        key=key,
        name=variable_name(variable),
        dtype=variable.dtype.as_datatype_enum,
        shape=variable.shape.as_proto(),
    )


def variable_name(variable) -> str:
    """The name of a `tf.Variable` in graphs and checkpoint object graphs:
    its TF name without the output index (`dense/kernel:0` -> `dense/kernel`)."""
    return variable.name.rsplit(":", 1)[0]


def _dtype_and_shape(tensor) -> tuple:
    return tensor.dtype.as_datatype_enum, tensor.shape.as_proto()


def add(meta, signature: Signature, resource_nodes: dict[str, str]) -> dict:
    """Writes `signature` into `meta` (a MetaGraphDef): its nodes, its
    functions (without hints, `graph_compaction.strip_hints`) and its
    SignatureDef. `finish` then finishes the graph as TF's save would.

    Args:
      meta: the MetaGraph, whose graph holds the nodes of `resource_nodes`.
      signature: from `describe`.
      resource_nodes: a `Resource`'s path -> its node in `meta`'s graph.

    Returns:
      The name of each `VarHandleOp` node made -> its checkpoint key.
    """
    graph = meta.graph_def
    names = _Names(graph)
    sig = meta.signature_def[signature.key]
    sig.method_name = signature.method_name
    arguments = []
    for name, dtype, shape in signature.inputs:
        node = _node(
            graph,
            names.new(f"{signature.key}_{name}"),
            "Placeholder",
            dtype=dtype,
            shape=shape,
        )
        arguments.append(node.name)
        sig.inputs[name].CopyFrom(_info(f"{node.name}:0", dtype, shape))
    variables: dict[str, str] = {}  # checkpoint key -> node name
    types = [dtype for _, dtype, _ in signature.inputs]
    for captured in signature.captures:
        arguments.append(
            _captured_node(graph, names, captured, resource_nodes, variables)
        )
        types.append(_captured_type(captured))
    call = _node(
        graph,
        names.new(_CALL_OP),
        _CALL_OP,
        Tin=types,
        Tout=[d for _, d, _ in signature.outputs],
        f=attr_value_pb2.AttrValue(
            func=attr_value_pb2.NameAttrList(name=signature.function)
        ),
        config=b"",
        config_proto=b"",
        executor_type=b"",
    )
    call.input.extend(arguments)
    for i, (name, dtype, shape) in enumerate(signature.outputs):
        sig.outputs[name].CopyFrom(_info(f"{call.name}:{i}", dtype, shape))
    _add_functions(graph.library, signature.library)
    return {name: key for key, name in variables.items()}


def _captured_node(graph, names, captured, resource_nodes, variables) -> str:
    """The node that feeds `captured` to the call, made when needed."""
    if isinstance(captured, Resource):
        return resource_nodes[captured.path]
    if isinstance(captured, Variable):
        if captured.key not in variables:
            name = names.new(captured.name)
            _node(
                graph,
                name,
                "VarHandleOp",
                dtype=captured.dtype,
                shape=captured.shape,
                shared_name=name.encode(),
                container=b"",
            )
            variables[captured.key] = name
        return variables[captured.key]
    return _node(
        graph,
        names.new("Const"),
        "Const",
        dtype=captured.value.dtype,
        value=captured.value,
    ).name


def _captured_type(captured) -> int:
    if isinstance(captured, Constant):
        return captured.value.dtype
    return tf.resource.as_datatype_enum


class _Names:
    """Unique node names in one graph, as TF makes them (`name`, `name_1`)."""

    def __init__(self, graph):
        self._taken = {node.name for node in graph.node}

    def new(self, wanted: str) -> str:
        base = _NOT_IN_NAMES.sub("_", wanted).lstrip("_-/>") or "node"
        return graph_savers.unique_name(base, self._taken)


def _node(graph, name: str, op: str, **attrs) -> node_def_pb2.NodeDef:
    """Adds a node; its attrs as `graph_savers.attrs` takes them."""
    return graph.node.add(name=name, op=op, attr=graph_savers.attrs(**attrs))


def _info(name: str, dtype: int, shape) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(name=name, dtype=dtype, tensor_shape=shape)


def _add_functions(library, functions) -> None:
    """Adds to `library` the functions of `functions` it does not hold (the
    eval step calls the serve function, there already)."""
    held = {f.signature.name for f in library.function}
    added = function_pb2.FunctionDefLibrary(
        function=[f for f in functions.function if f.signature.name not in held]
    )
    graph_compaction.strip_hints(added)
    library.function.extend(added.function)


def finish(meta) -> None:
    """Finishes `meta`'s graph as `tf.saved_model.save` finishes its own:
    attributes that hold their op's default value are dropped from every
    node (a consumer built before an attr was added still loads the graph),
    and `stripped_op_list` lists the ops the graph uses. Both by TF1's
    `export_meta_graph`, in a graph context of its own (it refuses to run
    eagerly)."""
    with tf.Graph().as_default():
        exported = tf.compat.v1.train.export_meta_graph(
            graph_def=meta.graph_def,
            clear_devices=False,
            clear_extraneous_savers=False,
            strip_default_attrs=True,
        )
    meta.graph_def.CopyFrom(exported.graph_def)
    meta.meta_info_def.stripped_op_list.CopyFrom(
        exported.meta_info_def.stripped_op_list
    )
