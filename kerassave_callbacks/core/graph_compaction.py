"""Makes the functions of a several-MetaGraph export smaller without changing
what they compute, as `tensorflow.core` protos, for `graph_split`.

Every function loses two hints no loader of such an export uses
(`strip_hints`). The functions only the train graph holds (the train step:
the forward pass, its gradient, the optimizer's update of every variable)
are also compacted (`compact_train_graph`), since the traced step repeats
itself: Keras' optimizers compute the step count, its powers and their
constants again for every variable (Adam: 37 nodes a variable, 20 of them
repeats), and node names, repeated in every input that reads them, were
most of the file.

- Repeats are merged: a node with the op, attributes, device, inputs and
  control inputs of an earlier one is dropped and its readers read the
  earlier one. Grappler's common subexpression elimination does that on
  every load; here it is done once in the file. Only ops whose `OpDef` is
  not stateful are merged, and `ReadVariableOp`: automatic control
  dependencies order every read after the write before it and every write
  after the reads before it, so two reads of a variable after the same
  control inputs read the same value.
- Names are shortened: a node named in a scope becomes its first scope and
  a number (`gradient_tape/1f`, `adam/2a0`), so that an error or
  TensorBoard's graph still says which part of the step a node is in;
  inputs, colocations and returns follow.

The serve and eval graphs keep their functions as traced: TF Serving's
errors name their nodes as the model did.
"""

from __future__ import annotations

from kerassave_callbacks.core import modes

# Stateful, but a read: see the module docstring.
_MERGED_STATEFUL = frozenset({"ReadVariableOp"})
_HINTS = ("_output_shapes", "_gradient_op_type")


def strip_hints(library) -> None:
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
            for hint in _HINTS:
                if hint in node.attr:
                    del node.attr[hint]


def compact_train_graph(saved) -> None:
    """Compacts, in place, the functions of `saved`'s train MetaGraph that no
    other MetaGraph of `saved` holds."""
    train = [m for m in saved.meta_graphs if modes.TRAIN.tag in m.meta_info_def.tags]
    if not train:
        return
    (meta,) = train
    shared = {
        f.signature.name
        for other in saved.meta_graphs
        if other is not meta
        for f in other.graph_def.library.function
    }
    # Ops not listed are library functions called as ops: never merged.
    ops = meta.meta_info_def.stripped_op_list.op
    mergeable = {op.name for op in ops if not op.is_stateful} | _MERGED_STATEFUL
    for function in meta.graph_def.library.function:
        if function.signature.name not in shared:
            _compact(function, mergeable)


def _compact(function, mergeable) -> None:
    """Merges the repeats in `function` (a FunctionDef) of nodes whose op is
    in `mergeable`, then shortens its node names (module docstring)."""
    merged: dict[str, str] = {}
    # One pass when the nodes are in the order they were traced.
    while _merge_pass(function, mergeable, merged):
        pass
    kept = [node for node in function.node_def if node.name not in merged]
    short = {
        node.name: f"{node.name.split('/')[0]}/{i:x}"
        for i, node in enumerate(kept)
        if "/" in node.name
    }

    def rename(name: str) -> str:
        name = _final(merged, name)
        return short.get(name, name)

    for node in kept:
        node.name = short.get(node.name, node.name)
    _rename_references(function, kept, rename)
    del function.node_def[:]
    function.node_def.extend(kept)


def _merge_pass(function, mergeable, merged: dict[str, str]) -> bool:
    """Adds to `merged` the name of each node repeating an earlier one ->
    the earlier one's. Returns whether another pass may find more: a node
    merged in this one was an input of a node before it."""
    first: dict[tuple, list] = {}
    seen: set[str] = set()
    ahead: set[str] = set()  # Inputs met before their node.
    for node in function.node_def:
        seen.add(node.name)
        if node.name in merged or node.op not in mergeable:
            continue
        data, control = [], set()
        for name in node.input:
            source, colon, output = name.partition(":")
            if source.startswith("^"):
                source = _final(merged, source[1:])
                control.add(source)
            elif colon:
                source = _final(merged, source)
                data.append((source, output))
            else:  # An argument of the function.
                data.append((source, ""))
                continue
            if source not in seen:
                ahead.add(source)
        key = (node.op, node.device, tuple(data), tuple(sorted(control)))
        # Attributes are compared only between nodes alike in all else.
        alike = first.setdefault(key, [])
        attrs = _attr_bytes(node) if alike else None
        earlier = next((e for e in alike if _attrs_of(e) == attrs), None)
        if earlier is None:
            alike.append([node, attrs])
        else:
            merged[node.name] = earlier[0].name
    return not ahead.isdisjoint(merged)


def _attrs_of(entry: list) -> tuple:
    """The attribute bytes of `entry` ([node, bytes or None]), computed once."""
    if entry[1] is None:
        entry[1] = _attr_bytes(entry[0])
    return entry[1]


def _attr_bytes(node) -> tuple:
    return tuple(
        (name, node.attr[name].SerializeToString(deterministic=True))
        for name in sorted(node.attr)
    )


def _final(merged: dict[str, str], name: str) -> str:
    while name in merged:
        name = merged[name]
    return name


def _rename_references(function, nodes, rename) -> None:
    """Rewrites, with `rename` (node name -> node name), the inputs and
    colocations of `nodes` and `function`'s returns; control inputs and
    control outputs that then repeat are dropped."""
    for node in nodes:
        inputs, seen = [], set()
        for name in node.input:
            name = _renamed_input(name, rename)
            if name.startswith("^"):
                if name in seen:
                    continue
                seen.add(name)
            inputs.append(name)
        node.ClearField("input")
        node.input.extend(inputs)
        if "_class" in node.attr:
            located = node.attr["_class"].list.s
            located[:] = [
                b"loc:@" + rename(s[5:].decode()).encode()
                if s.startswith(b"loc:@")
                else s
                for s in located
            ]
    for key, value in list(function.ret.items()):
        function.ret[key] = _renamed_input(value, rename)
    _rename_control_outputs(function, rename)


def _rename_control_outputs(function, rename) -> None:
    """Renames the nodes of `function`'s control outputs; of two that are
    then one node (TF refuses that), the first stays."""
    kept, targets = [], set()
    for key in function.signature.control_output:
        target = rename(function.control_ret[key])
        if target in targets:
            del function.control_ret[key]
            continue
        targets.add(target)
        kept.append(key)
        function.control_ret[key] = target
    del function.signature.control_output[:]
    function.signature.control_output.extend(kept)


def _renamed_input(name: str, rename) -> str:
    """`name` (`node:output:index`, `^node` or an argument's name) with its
    node renamed; arguments, which have no `:`, stay."""
    if name.startswith("^"):
        return "^" + rename(name[1:])
    node, colon, rest = name.partition(":")
    return rename(node) + colon + rest if colon else name
