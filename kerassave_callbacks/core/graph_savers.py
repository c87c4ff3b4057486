"""Graph-level savers, as TF1's `Saver` built them, for the MetaGraphs
`graph_split` makes: a filename placeholder, `RestoreV2` with one
`AssignVariableOp` per variable and `restore_all`, and in a graph that saves
`SaveV2` and the save tensor; and the v1 `variables` collection that TF's
v1 loader lifts into TF2 (`tf.saved_model.load(tags=[...])`). Edited as
`tensorflow.core` protos.
"""

from __future__ import annotations

from tensorflow.core.framework import (
    attr_value_pb2,
    node_def_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
    variable_pb2,
)
from tensorflow.core.protobuf import saver_pb2

# The scope of the saver's nodes in every MetaGraph, as TF1's `Saver`.
SAVER_SCOPE = "save"


def attrs(**kwargs) -> dict:
    """NodeDef attrs by name, from a TensorProto, a TensorShapeProto, a list
    of dtypes, bytes (a string attr), an AttrValue as it is, or a dtype."""
    out = {}
    for name, value in kwargs.items():
        if isinstance(value, attr_value_pb2.AttrValue):
            out[name] = value
        elif isinstance(value, tensor_pb2.TensorProto):
            out[name] = attr_value_pb2.AttrValue(tensor=value)
        elif isinstance(value, tensor_shape_pb2.TensorShapeProto):
            out[name] = attr_value_pb2.AttrValue(shape=value)
        elif isinstance(value, list):
            out[name] = attr_value_pb2.AttrValue(
                list=attr_value_pb2.AttrValue.ListValue(type=value)
            )
        elif isinstance(value, bytes):
            out[name] = attr_value_pb2.AttrValue(s=value)
        else:
            out[name] = attr_value_pb2.AttrValue(type=value)
    return out


def _strings(values: list[str]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        string_val=[v.encode("utf-8") for v in values],
    )


def unique_name(wanted: str, taken: set[str]) -> str:
    """`wanted`, or the first of `wanted_1`, `wanted_2`... not in `taken`,
    as TF makes names unique; added to `taken`."""
    name, i = wanted, 0
    while name in taken:
        i += 1
        name = f"{wanted}_{i}"
    taken.add(name)
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
                attr=attrs(dtype=variable.attr["dtype"].type),
            )
        )
    return read


def add_saver(meta, variables: list, keys: dict[str, str], saves: bool) -> None:
    """Adds restore (and with `saves`, save) nodes for `variables`.

    The saver_def of a graph that does not save (serve, eval: loaders only
    restore, and these graphs never change weights) names a save tensor it
    does not hold, so a TF1 `Saver` made from it restores and fails loudly
    if asked to save.
    """
    graph = meta.graph_def
    scope = unique_name(SAVER_SCOPE, {node.name.split("/")[0] for node in graph.node})
    names = {node.name for node in graph.node}
    nodes = _saver_inputs(scope, [keys[v.name] for v in variables])
    nodes += _restore_nodes(scope, variables)
    if saves and variables:
        reads = [_read_name(graph, v, names) for v in variables]
        nodes += _save_nodes(scope, variables, reads)
    graph.node.extend(nodes)
    meta.saver_def.CopyFrom(
        saver_pb2.SaverDef(
            filename_tensor_name=f"{scope}/filename:0",
            save_tensor_name=f"{scope}/control_dependency:0",
            restore_op_name=f"{scope}/restore_all",
            max_to_keep=5,
            sharded=False,
            keep_checkpoint_every_n_hours=10000.0,
            version=saver_pb2.SaverDef.V2,
        )
    )


def _saver_inputs(scope: str, keys: list[str]) -> list:
    """The filename placeholder and the checkpoint keys and slices."""
    string = types_pb2.DT_STRING
    return [
        node_def_pb2.NodeDef(
            name=f"{scope}/filename",
            op="Placeholder",
            attr=attrs(dtype=string, shape=tensor_shape_pb2.TensorShapeProto()),
        ),
        node_def_pb2.NodeDef(
            name=f"{scope}/tensor_names",
            op="Const",
            attr=attrs(dtype=string, value=_strings(keys)),
        ),
        node_def_pb2.NodeDef(
            name=f"{scope}/shape_and_slices",
            op="Const",
            attr=attrs(dtype=string, value=_strings([""] * len(keys))),
        ),
    ]


def _restore_nodes(scope: str, variables: list) -> list:
    """RestoreV2 (it takes at least one tensor), one AssignVariableOp per
    variable, and `restore_all` over them."""
    nodes = []
    if variables:
        nodes.append(
            node_def_pb2.NodeDef(
                name=f"{scope}/RestoreV2",
                op="RestoreV2",
                input=[
                    f"{scope}/filename",
                    f"{scope}/tensor_names",
                    f"{scope}/shape_and_slices",
                ],
                attr=attrs(dtypes=[v.attr["dtype"].type for v in variables]),
            )
        )
    for i, variable in enumerate(variables):
        nodes.append(
            node_def_pb2.NodeDef(
                name=f"{scope}/Assign_{i}",
                op="AssignVariableOp",
                input=[variable.name, f"{scope}/RestoreV2:{i}"],
                attr=attrs(dtype=variable.attr["dtype"].type),
            )
        )
    nodes.append(
        node_def_pb2.NodeDef(
            name=f"{scope}/restore_all",
            op="NoOp",
            input=[f"^{scope}/Assign_{i}" for i in range(len(variables))],
        )
    )
    return nodes


def _save_nodes(scope: str, variables: list, reads: list[str]) -> list:
    """SaveV2 of the variables' reads, and the save tensor after it."""
    filename = f"{scope}/filename"
    return [
        node_def_pb2.NodeDef(
            name=f"{scope}/SaveV2",
            op="SaveV2",
            input=[filename, f"{scope}/tensor_names", f"{scope}/shape_and_slices"]
            + reads,
            attr=attrs(dtypes=[v.attr["dtype"].type for v in variables]),
        ),
        node_def_pb2.NodeDef(
            name=f"{scope}/control_dependency",
            op="Identity",
            input=[filename, f"^{scope}/SaveV2"],
            attr=attrs(T=types_pb2.DT_STRING),
        ),
    ]


def add_variable_collection(meta, variables: list) -> None:
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
