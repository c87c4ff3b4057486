"""Splits the one MetaGraph `tf.saved_model.save` writes into one per mode.

Each MetaGraph keeps only its own signature, the graph nodes and library
functions that signature and the init op need, and a saver of its own over
the variables it holds: written here as graph nodes (`RestoreV2` and one
`AssignVariableOp` per variable, and in the train graph `SaveV2`), as TF1's
`Saver` built them. `tf.saved_model.save` is asked for no saver of its own
(`save_options`): its save and restore functions are traced over every
variable and were copied into every MetaGraph, a third of the file. The
functions only the train graph holds are then compacted
(`graph_compaction`). The graphs are edited as `tensorflow.core` protos.
"""

from __future__ import annotations

import collections

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from kerassave_callbacks import layout
from kerassave_callbacks.core import (
    direct_signatures,
    graph_compaction,
    graph_savers,
    modes,
)

_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def save_options(mode_list) -> tf.saved_model.SaveOptions:
    """How `tf.saved_model.save` saves what `split_by_mode` then splits.

    Without TF's saver, a pair of functions traced over every variable
    (each MetaGraph gets graph nodes of its own, `graph_savers`); with
    several modes, without custom gradients (see
    `graph_compaction.strip_hints`); the serve mode alone keeps them, and
    its object graph, for TF2 to read it natively.
    """
    return tf.saved_model.SaveOptions(
        experimental_skip_saver=True,
        experimental_custom_gradients=len(mode_list) == 1,
    )


def split_by_mode(
    saved: saved_model_pb2.SavedModel,
    mode_list,
    checkpoint_shapes: dict,
    *,
    serving: dict[str, str],
    shared_inputs: list[str] = (),
    direct: dict[str, direct_signatures.Signature] | None = None,
) -> saved_model_pb2.SavedModel:
    """One MetaGraph per mode, each with only that mode's signatures.

    Args:
      saved: what `tf.saved_model.save` wrote (`save_options`): one
        MetaGraph, without a saver. The serve mode alone keeps its graph
        and TF2 object graph as written, but for the variables no signature
        uses (`_drop_unbound_variables`).
      mode_list: the modes to write, `modes.SERVE` first.
      checkpoint_shapes: checkpoint key -> shape of the variables written,
        against which every variable of the graph is checked.
      serving: key -> method name of the serve MetaGraph's signatures.
      shared_inputs: keys of serving signatures whose one input becomes one
        tensor (TF Serving's MultiInference runs them on one input).
      direct: signature key -> the signature of a mode that `saved` does
        not hold, added to that mode's MetaGraph (`direct_signatures`).

    Raises:
      ValueError: a variable that a MetaGraph keeps is not found in the
        checkpoint with its shape.
    """
    (base,) = saved.meta_graphs
    direct = direct or {}
    _share_input(base, shared_inputs)
    out = saved_model_pb2.SavedModel(
        saved_model_schema_version=saved.saved_model_schema_version
    )
    several = len(mode_list) > 1
    bound = _bound_nodes(base)
    keys = _variable_keys(base, bound)
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
        methods = (
            serving if mode is modes.SERVE else {mode.signature_key: mode.method_name}
        )
        for key in list(meta.signature_def):
            # Keys with a double underscore (the init op) serve every mode.
            if key not in methods and not key.startswith("__"):
                del meta.signature_def[key]
        for key, method in methods.items():
            meta.signature_def[key].method_name = method
        if several:
            graph_keys = _build_graph(
                meta, base, direct.get(mode.signature_key), keys, bound
            )
        else:
            graph_keys = keys
            _drop_unbound_variables(meta.graph_def, keys)
        # A serve-only export saves, as TF's own saver did.
        saves = mode is modes.TRAIN or not several
        _add_saver(meta, graph_keys, checkpoint_shapes, saves=saves)
        if mode.signature_key in direct:
            direct_signatures.finish(meta)
    if several:
        graph_compaction.compact_train_graph(out)
    return out


def _build_graph(meta, base, signature, keys: dict, bound: dict) -> dict:
    """Sets the graph of `meta` (one mode's MetaGraph of several): the part
    of `base`'s that its signatures need, plus `signature` (of
    `direct_signatures`) when `base` does not hold it.

    Returns:
      `keys` (`VarHandleOp` node -> checkpoint key, of `base`) with the
      variable nodes that `signature` added.
    """
    tables = _resource_nodes(bound, signature)
    meta.graph_def.CopyFrom(_pruned_graph(meta, base.graph_def, tables.values()))
    if signature is None:
        return keys
    return {**keys, **direct_signatures.add(meta, signature, tables)}


def _add_saver(meta, keys: dict, checkpoint_shapes: dict, *, saves: bool) -> None:
    """Adds the saver of `meta`'s variables (`graph_savers`).

    Raises:
      ValueError: a variable is not found in the checkpoint with its shape.
    """
    variables = _variables(meta.graph_def)
    for variable in variables:
        if variable.name not in keys:
            _cannot_map(variable.name, "not found in the checkpoint")
    kept = {v.name: keys[v.name] for v in variables}
    _check_shapes(meta.graph_def, kept, checkpoint_shapes)
    graph_savers.add_saver(meta, variables, keys, saves=saves)
    graph_savers.add_variable_collection(meta, variables)


def _share_input(meta, keys) -> None:
    """Makes the signatures `keys` (each with one input) read the first
    one's input tensor: their function calls are rewired to it, and their
    own input placeholders are left unused."""
    if len(keys) < 2:
        return
    shared = _one_input(meta.signature_def[keys[0]])
    renamed = {}
    for key in keys[1:]:
        own = _one_input(meta.signature_def[key])
        renamed[_tensor_node(own.name)] = _tensor_node(shared.name)
        own.name = shared.name
    for node in meta.graph_def.node:
        for i, name in enumerate(node.input):
            source = _tensor_node(name)
            if source in renamed and not name.startswith("^"):
                node.input[i] = name.replace(source, renamed[source], 1)


def _one_input(signature):
    (tensor,) = signature.inputs.values()
    return tensor


def _bound_nodes(meta) -> dict[str, str]:
    """Object path in `meta`'s object graph -> the node that a function call
    of its graph passes as that object (a variable, a lookup table).

    A function that the graph calls takes its captured objects after its
    arguments, in the order of its `bound_inputs` in the object graph; the
    path of an object is its path from the root there (the first one,
    breadth first, as checkpoints name it), each name ending in "/".
    """
    objects = meta.object_graph_def
    paths = {0: ""}
    queue = collections.deque([0])
    while queue:
        parent = queue.popleft()
        for child in objects.nodes[parent].children:
            if child.node_id not in paths:
                paths[child.node_id] = paths[parent] + object_path(child.local_name)
                queue.append(child.node_id)
    nodes = {}
    for node in meta.graph_def.node:
        if node.op not in _CALL_OPS:
            continue
        function = objects.concrete_functions.get(node.attr["f"].func.name)
        if function is None or not function.bound_inputs:
            continue
        arguments = [i for i in node.input if not i.startswith("^")]
        captured = arguments[len(arguments) - len(function.bound_inputs) :]
        for name, object_id in zip(captured, function.bound_inputs, strict=True):
            nodes.setdefault(paths[object_id], _tensor_node(name))
    return nodes


def _variable_keys(meta, bound: dict) -> dict[str, str]:
    """`VarHandleOp` node name -> checkpoint key, for the variables among
    `bound` (`_bound_nodes`).

    Raises:
      ValueError: a node is found as two variables.
    """
    ops = {node.name: node.op for node in meta.graph_def.node}
    keys = {}
    for path, name in bound.items():
        if ops[name] != "VarHandleOp":
            continue
        key = path.rstrip("/") + layout.VARIABLE_SUFFIX
        if keys.setdefault(name, key) != key:
            _cannot_map(name, f"found as both {keys[name]!r} and {key!r}")
    return keys


def _check_shapes(graph, keys: dict, checkpoint_shapes: dict) -> None:
    """Raises ValueError unless the checkpoint holds each variable of `keys`
    (node name -> checkpoint key) with a shape that fits its node's."""
    by_name = {node.name: node for node in graph.node}
    for name, key in keys.items():
        shape = by_name[name].attr["shape"].shape
        if key not in checkpoint_shapes or not _fits(shape, checkpoint_shapes[key]):
            _cannot_map(
                name,
                f"found as {key!r}, which the checkpoint does not hold with "
                f"its shape {[d.size for d in shape.dim]}",
            )


def _resource_nodes(bound: dict, signature) -> dict[str, str]:
    """The nodes of the resources `signature` captures, by object path."""
    if signature is None:
        return {}
    paths = {
        c.path for c in signature.captures if isinstance(c, direct_signatures.Resource)
    }
    missing = paths - set(bound)
    if missing:
        _cannot_map(sorted(missing)[0], "not passed to any serve signature", "resource")
    return {path: bound[path] for path in paths}


def _fits(shape, values_shape) -> bool:
    """Whether values of `values_shape` fit a variable of `shape` (a
    TensorShapeProto, in which -1 is any size)."""
    if shape.unknown_rank:
        return True
    return len(shape.dim) == len(values_shape) and all(
        d.size in (-1, n) for d, n in zip(shape.dim, values_shape, strict=True)
    )


def _cannot_map(name: str, why: str, kind: str = "variable"):
    raise ValueError(
        f"Cannot export: the graph's {kind} {name!r} was {why}. Please "
        "report this with the model; serving_only=True exports the serve "
        "graph alone."
    )


def object_path(*names: str) -> str:
    """The path of the object reached from the root by `names` in a saved
    object graph, as `_bound_nodes` keys it: each name escaped as TF's
    checkpoints do, and ending in "/"."""
    return "".join(n.replace(".", "..").replace("/", ".S") + "/" for n in names)


def _drop_unbound_variables(graph_def, keys: dict) -> None:
    """Removes from `graph_def` the variables that no signature passes to
    a function (not in `keys`: a dropout's seed state, say), whose
    checkpoint keys the graph does not tell, so no saver could restore
    them; and the nodes that read them. TF2 builds the variables of a
    serve-only export from its object graph, not from these nodes."""
    dropped = {v.name for v in _variables(graph_def) if v.name not in keys}
    reading = dropped
    while reading:
        reading = {
            node.name
            for node in graph_def.node
            if node.name not in dropped
            and any(_tensor_node(i) in reading for i in node.input)
        }
        dropped |= reading
    kept = [node for node in graph_def.node if node.name not in dropped]
    del graph_def.node[:]
    graph_def.node.extend(kept)


def _variables(graph) -> list:
    return [node for node in graph.node if node.op == "VarHandleOp"]


def _tensor_node(name: str) -> str:
    return name.split(":")[0].lstrip("^")


def _pruned_graph(meta, graph_def, also_needed=()):
    """The nodes and functions of `graph_def` that `meta`'s signatures and
    init op need, and the nodes `also_needed`: the serve graph then carries
    no training functions, and no variables only training uses (optimizer
    slots).

    Only for exports with several MetaGraphs, which every loader reads
    through the graph (TF2 too, via its v1 loader); their object graph,
    which would name the functions pruned away, is left out. Functions are
    copied without two hints, see `graph_compaction.strip_hints`.
    """
    needed = [
        _tensor_node(t.name)
        for sig in meta.signature_def.values()
        for t in list(sig.inputs.values()) + list(sig.outputs.values())
    ]
    for collection in meta.collection_def.values():
        needed += [_tensor_node(n) for n in collection.node_list.value]
    needed += list(also_needed)
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
    graph_compaction.strip_hints(graph.library)
    return graph


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
