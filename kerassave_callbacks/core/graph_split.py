"""Splits the one MetaGraph `tf.saved_model.save` writes into one per mode.

Each MetaGraph keeps only its own signature, the graph nodes and library
functions that signature and the init op need, and a saver of its own over
the variables it holds: written here as graph nodes (`RestoreV2` and one
`AssignVariableOp` per variable, and in the train graph `SaveV2`), as TF1's
`Saver` built them. `tf.saved_model.save` is asked for no saver of its own
(`save_options`): its save and restore functions are traced over every
variable and were copied into every MetaGraph, a third of the file. The
graphs are edited as `tensorflow.core` protos.
"""

from __future__ import annotations

import collections

import tensorflow as tf
from tensorflow.core.framework import (
    attr_value_pb2,
    node_def_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
    variable_pb2,
)
from tensorflow.core.protobuf import saved_model_pb2, saver_pb2

from kerassave_callbacks import layout
from kerassave_callbacks.core import modes

# The scope of the saver's nodes in every MetaGraph, as TF1's `Saver`.
SAVER_SCOPE = "save"
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def save_options(mode_list) -> tf.saved_model.SaveOptions:
    """How `tf.saved_model.save` saves what `split_by_mode` then splits.

    With several modes, no saver (each MetaGraph gets its own) and no custom
    gradients (see `_strip_function_hints`); the serve mode alone is saved
    as TF saves it, for TF2 to read natively.
    """
    several = len(mode_list) > 1
    return tf.saved_model.SaveOptions(
        experimental_skip_saver=several, experimental_custom_gradients=not several
    )


def split_by_mode(
    saved: saved_model_pb2.SavedModel, mode_list, checkpoint_shapes: dict
) -> saved_model_pb2.SavedModel:
    """One MetaGraph per mode, each with only that mode's signature.

    Args:
      saved: what `tf.saved_model.save` wrote: one MetaGraph, with a saver
        of its own when `mode_list` is the serve mode alone (that export
        keeps its TF2 object graph and saver as written), without one when
        there are several modes.
      mode_list: the modes to write, `modes.SERVE` first.
      checkpoint_shapes: checkpoint key -> shape of the variables written,
        against which every variable of the graph is checked.

    Raises:
      ValueError: a variable that a MetaGraph keeps is not found in the
        checkpoint with its shape.
    """
    (base,) = saved.meta_graphs
    out = saved_model_pb2.SavedModel(
        saved_model_schema_version=saved.saved_model_schema_version
    )
    several = len(mode_list) > 1
    keys = _variable_keys(base, checkpoint_shapes) if several else {}
    # What every MetaGraph starts from: with several, all but the graph and
    # the object graph, which `_pruned_graph` builds from `base` per mode.
    shell = base
    if several:
        shell = type(base)()
        shell.CopyFrom(base)
        shell.ClearField("graph_def")
        shell.ClearField("object_graph_def")
    for mode in mode_list:
        meta = out.meta_graphs.add()
        meta.CopyFrom(shell)
        del meta.meta_info_def.tags[:]
        meta.meta_info_def.tags.append(mode.tag)
        for key in list(meta.signature_def):
            # Keys with a double underscore (the init op) serve every mode.
            if key != mode.signature_key and not key.startswith("__"):
                del meta.signature_def[key]
        meta.signature_def[mode.signature_key].method_name = mode.method_name
        if several:
            meta.graph_def.CopyFrom(_pruned_graph(meta, base.graph_def))
            variables = _variables(meta.graph_def)
            for variable in variables:
                if variable.name not in keys:
                    _cannot_map(variable.name, "not found in the checkpoint")
            _add_saver(meta, variables, keys, saves=mode is modes.TRAIN)
            _add_variable_collection(meta, variables)
    return out


def _variable_keys(meta, checkpoint_shapes: dict) -> dict[str, str]:
    """`VarHandleOp` node name -> checkpoint key, for the variables that the
    functions `meta` calls capture.

    A function that the graph calls takes its captured variables after its
    arguments, in the order of its `bound_inputs` in the object graph; the
    checkpoint key of an object is its path from the root there (the first
    one, breadth first, as checkpoints name it).

    Raises:
      ValueError: a variable has a shape other than the checkpoint's.
    """
    objects = meta.object_graph_def
    paths = {0: ""}
    queue = collections.deque([0])
    while queue:
        parent = queue.popleft()
        for child in objects.nodes[parent].children:
            if child.node_id not in paths:
                paths[child.node_id] = paths[parent] + _escape(child.local_name) + "/"
                queue.append(child.node_id)
    graph = meta.graph_def
    by_name = {node.name: node for node in graph.node}
    keys = {}
    for node in graph.node:
        if node.op not in _CALL_OPS:
            continue
        function = objects.concrete_functions.get(node.attr["f"].func.name)
        if function is None or not function.bound_inputs:
            continue
        arguments = [i for i in node.input if not i.startswith("^")]
        captured = arguments[len(arguments) - len(function.bound_inputs) :]
        for name, object_id in zip(captured, function.bound_inputs, strict=True):
            name = _tensor_node(name)
            if by_name[name].op != "VarHandleOp":
                continue
            key = paths[object_id].rstrip("/") + layout.VARIABLE_SUFFIX
            if keys.setdefault(name, key) != key:
                _cannot_map(name, f"found as both {keys[name]!r} and {key!r}")
    for name, key in keys.items():
        shape = by_name[name].attr["shape"].shape
        if key not in checkpoint_shapes or not _fits(shape, checkpoint_shapes[key]):
            _cannot_map(
                name,
                f"found as {key!r}, which the checkpoint does not hold with "
                f"its shape {[d.size for d in shape.dim]}",
            )
    return keys


def _fits(shape, values_shape) -> bool:
    """Whether values of `values_shape` fit a variable of `shape` (a
    TensorShapeProto, in which -1 is any size)."""
    if shape.unknown_rank:
        return True
    return len(shape.dim) == len(values_shape) and all(
        d.size in (-1, n) for d, n in zip(shape.dim, values_shape, strict=True)
    )


def _cannot_map(variable: str, why: str):
    raise ValueError(
        f"Cannot export: the graph's variable {variable!r} was {why}. Please "
        "report this with the model; serving_only=True exports the serve "
        "graph alone."
    )


def _escape(local_name: str) -> str:
    """A name in a checkpoint key, escaped as TF's checkpoints do."""
    return local_name.replace(".", "..").replace("/", ".S")


def _variables(graph) -> list:
    return [node for node in graph.node if node.op == "VarHandleOp"]


def _attr(**kwargs) -> dict:
    """NodeDef attrs by name, from a TensorProto, a TensorShapeProto, a list
    of dtypes or a dtype."""
    attrs = {}
    for name, value in kwargs.items():
        if isinstance(value, tensor_pb2.TensorProto):
            attrs[name] = attr_value_pb2.AttrValue(tensor=value)
        elif isinstance(value, tensor_shape_pb2.TensorShapeProto):
            attrs[name] = attr_value_pb2.AttrValue(shape=value)
        elif isinstance(value, list):
            attrs[name] = attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(type=value)
            )
        else:
            attrs[name] = attr_value_pb2.AttrValue(type=value)
    return attrs


def _strings(values: list[str]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        string_val=[v.encode("utf-8") for v in values],
    )


def _unique_scope(graph, scope: str) -> str:
    taken = {node.name.split("/")[0] for node in graph.node}
    name, i = scope, 0
    while name in taken:
        i += 1
        name = f"{scope}_{i}"
    return name


def _read_name(graph, variable, names: set) -> str:
    """The `<variable>/Read/ReadVariableOp` node (added when missing)."""
    read = f"{variable.name}/Read/ReadVariableOp"
    if read not in names:
        names.add(read)
        graph.node.append(
            node_def_pb2.NodeDef(
                name=read,
                op="ReadVariableOp",
                input=[variable.name],
                attr=_attr(dtype=variable.attr["dtype"].type),
            )
        )
    return read


def _add_saver(meta, variables: list, keys: dict[str, str], saves: bool) -> None:
    """Adds restore (and with `saves`, save) nodes for `variables`.

    The saver_def of a graph that does not save (serve, eval: loaders only
    restore, and these graphs never change weights) names a save tensor it
    does not hold, so a TF1 `Saver` made from it restores and fails loudly
    if asked to save.
    """
    graph = meta.graph_def
    scope = _unique_scope(graph, SAVER_SCOPE)
    names = {node.name for node in graph.node}
    dtypes = [v.attr["dtype"].type for v in variables]
    tensor_names = f"{scope}/tensor_names"
    slices = f"{scope}/shape_and_slices"
    filename = f"{scope}/filename"
    nodes = [
        node_def_pb2.NodeDef(
            name=filename,
            op="Placeholder",
            attr=_attr(
                dtype=types_pb2.DT_STRING, shape=tensor_shape_pb2.TensorShapeProto()
            ),
        ),
        node_def_pb2.NodeDef(
            name=tensor_names,
            op="Const",
            attr=_attr(
                dtype=types_pb2.DT_STRING,
                value=_strings([keys[v.name] for v in variables]),
            ),
        ),
        node_def_pb2.NodeDef(
            name=slices,
            op="Const",
            attr=_attr(
                dtype=types_pb2.DT_STRING, value=_strings([""] * len(variables))
            ),
        ),
    ]
    if variables:  # RestoreV2 and SaveV2 take at least one tensor.
        nodes.append(
            node_def_pb2.NodeDef(
                name=f"{scope}/RestoreV2",
                op="RestoreV2",
                input=[filename, tensor_names, slices],
                attr=_attr(dtypes=dtypes),
            )
        )
    assigns = []
    for i, variable in enumerate(variables):
        assigns.append(f"{scope}/Assign_{i}")
        nodes.append(
            node_def_pb2.NodeDef(
                name=assigns[-1],
                op="AssignVariableOp",
                input=[variable.name, f"{scope}/RestoreV2:{i}"],
                attr=_attr(dtype=variable.attr["dtype"].type),
            )
        )
    nodes.append(
        node_def_pb2.NodeDef(
            name=f"{scope}/restore_all",
            op="NoOp",
            input=["^" + a for a in assigns],
        )
    )
    if saves and variables:
        reads = [_read_name(graph, v, names) for v in variables]
        nodes += [
            node_def_pb2.NodeDef(
                name=f"{scope}/SaveV2",
                op="SaveV2",
                input=[filename, tensor_names, slices, *reads],
                attr=_attr(dtypes=dtypes),
            ),
            node_def_pb2.NodeDef(
                name=f"{scope}/control_dependency",
                op="Identity",
                input=[filename, f"^{scope}/SaveV2"],
                attr=_attr(T=types_pb2.DT_STRING),
            ),
        ]
    graph.node.extend(nodes)
    meta.saver_def.CopyFrom(
        saver_pb2.SaverDef(
            filename_tensor_name=f"{filename}:0",
            save_tensor_name=f"{scope}/control_dependency:0",
            restore_op_name=f"{scope}/restore_all",
            max_to_keep=5,
            sharded=False,
            keep_checkpoint_every_n_hours=10000.0,
            version=saver_pb2.SaverDef.V2,
        )
    )


def _add_variable_collection(meta, variables: list) -> None:
    """Lists `variables` in the v1 `variables` collection.

    TF reads a SavedModel with several MetaGraphs through its v1 loader,
    which lifts only the variables of that collection into the loaded
    object: with it, `tf.saved_model.load(path, tags=["serve"])` exposes the
    variables, so freezing, tf2onnx and other TF2 tools see the weights, as
    with a SavedModel written by TF1's `Builder`.
    """
    graph = meta.graph_def
    names = {node.name for node in graph.node}
    defs = [
        variable_pb2.VariableDef(
            variable_name=f"{variable.name}:0",
            initializer_name=variable.name,
            snapshot_name=f"{_read_name(graph, variable, names)}:0",
            is_resource=True,
        ).SerializeToString()
        for variable in variables
    ]
    collection = meta.collection_def["variables"].bytes_list
    del collection.value[:]
    collection.value.extend(defs)


def _tensor_node(name: str) -> str:
    return name.split(":")[0].lstrip("^")


def _pruned_graph(meta, graph_def):
    """The nodes and functions of `graph_def` that `meta`'s signatures and
    init op need: the serve graph then carries no training functions, and
    no variables only training uses (optimizer slots).

    Only for exports with several MetaGraphs, which every loader reads
    through the graph (TF2 too, via its v1 loader); their object graph,
    which would name the functions pruned away, is left out. Functions are
    copied without two hints, see `_strip_function_hints`.
    """
    needed = [
        _tensor_node(t.name)
        for sig in meta.signature_def.values()
        for t in list(sig.inputs.values()) + list(sig.outputs.values())
    ]
    for collection in meta.collection_def.values():
        needed += [_tensor_node(n) for n in collection.node_list.value]
    graph = type(graph_def)()
    graph.versions.CopyFrom(graph_def.versions)
    graph.node.extend(_sub_graph(graph_def, needed))
    library = graph_def.library
    functions = {f.signature.name: f for f in library.function}
    used = _functions_used(graph.node, functions)
    graph.library.function.extend(
        f for f in library.function if f.signature.name in used
    )
    graph.library.gradient.extend(
        g for g in library.gradient if g.function_name in used
    )
    _strip_function_hints(graph.library)
    return graph


def _strip_function_hints(library) -> None:
    """Drops the `_output_shapes` and `_gradient_op_type` of the nodes in
    `library`'s functions.

    `_output_shapes` (a sixth of the train graph) are hints: TF's v1
    loaders, TF Serving and the converters infer shapes again.
    `_gradient_op_type` names a Python custom gradient (TF's swish has
    one) that is not saved here (`experimental_custom_gradients=False`):
    a graph read through the v1 loaders cannot use a saved one (TF2 cannot
    differentiate such a graph at all; TF1's `tf.gradients` differentiates
    the recorded ops), so the attr only made TF2 loads warn about it.
    """
    for function in library.function:
        for node in function.node_def:
            for hint in ("_output_shapes", "_gradient_op_type"):
                if hint in node.attr:
                    del node.attr[hint]


def _sub_graph(graph_def, needed: list[str]) -> list:
    """The nodes of `graph_def` that `needed` reach through their inputs.

    What the deprecated `tf.compat.v1.graph_util.extract_sub_graph` did,
    keeping the nodes in their original order.
    """
    by_name = {node.name: node for node in graph_def.node}
    kept: set[str] = set()
    stack = [name for name in needed if name in by_name]
    while stack:
        name = stack.pop()
        if name in kept:
            continue
        kept.add(name)
        stack.extend(_tensor_node(i) for i in by_name[name].input)
    return [node for node in graph_def.node if node.name in kept]


def _functions_used(nodes, functions: dict) -> set[str]:
    """The names of the library functions that `nodes` need: those a needed
    node calls, as its op or through a function attr."""
    used: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        called = [node.op]
        for attr in node.attr.values():
            if attr.HasField("func"):
                called.append(attr.func.name)
            elif attr.list.func:
                called.extend(f.name for f in attr.list.func)
        for name in called:
            if name in functions and name not in used:
                used.add(name)
                stack.extend(functions[name].node_def)
    return used
