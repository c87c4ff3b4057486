"""TensorFlow's C++ SavedModel loader, called through TF's C API with ctypes.

`TF_LoadSessionFromSavedModel` is `tensorflow::LoadSavedModel`, the loader
TF Serving links: it picks the MetaGraph by tags, restores the variables,
runs the init op, and the session then runs a signature's tensors by name.
No Python loader is involved.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

_DIR = os.path.dirname(tf.__file__)
_LIBS = [
    ctypes.CDLL(os.path.join(_DIR, name), mode=ctypes.RTLD_GLOBAL)
    for name in ("libtensorflow_framework.so.2", "libtensorflow_cc.so.2")
]
_TSTRING_BYTES = 24  # sizeof(TF_TString)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}
_TF_STRING = 7


def _fn(name, restype, *argtypes):
    for lib in _LIBS:
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, list(argtypes)
            return fn
    raise AttributeError(name)


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("length", ctypes.c_size_t),
        ("dealloc", ctypes.c_void_p),
    ]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


P = ctypes.c_void_p
new_status = _fn("TF_NewStatus", P)
get_code = _fn("TF_GetCode", ctypes.c_int, P)
message = _fn("TF_Message", ctypes.c_char_p, P)
new_graph = _fn("TF_NewGraph", P)
new_options = _fn("TF_NewSessionOptions", P)
new_buffer = _fn("TF_NewBuffer", ctypes.POINTER(_Buffer))
load = _fn(
    "TF_LoadSessionFromSavedModel",
    P,
    P,
    P,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.c_int,
    P,
    ctypes.POINTER(_Buffer),
    P,
)
operation = _fn("TF_GraphOperationByName", P, P, ctypes.c_char_p)
allocate = _fn(
    "TF_AllocateTensor",
    P,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_int,
    ctypes.c_size_t,
)
tensor_data = _fn("TF_TensorData", P, P)
tensor_type = _fn("TF_TensorType", ctypes.c_int, P)
num_dims = _fn("TF_NumDims", ctypes.c_int, P)
dim = _fn("TF_Dim", ctypes.c_int64, P, ctypes.c_int)
byte_size = _fn("TF_TensorByteSize", ctypes.c_size_t, P)
string_init = _fn("TF_StringInit", None, P)
string_copy = _fn("TF_StringCopy", None, P, ctypes.c_char_p, ctypes.c_size_t)
string_data = _fn("TF_StringGetDataPointer", ctypes.c_void_p, P)
string_size = _fn("TF_StringGetSize", ctypes.c_size_t, P)
session_run = _fn(
    "TF_SessionRun",
    None,
    P,
    P,
    ctypes.POINTER(_Output),
    ctypes.POINTER(P),
    ctypes.c_int,
    ctypes.POINTER(_Output),
    ctypes.POINTER(P),
    ctypes.c_int,
    P,
    ctypes.c_int,
    P,
    P,
)


def _check(status) -> None:
    if get_code(status) != 0:
        raise RuntimeError(message(status).decode())


def _tensor(value: np.ndarray):
    dims = (ctypes.c_int64 * value.ndim)(*value.shape)
    if value.dtype == object:
        t = allocate(_TF_STRING, dims, value.ndim, _TSTRING_BYTES * value.size)
        base = tensor_data(t)
        for i, item in enumerate(value.reshape(-1)):
            data = item if isinstance(item, bytes) else str(item).encode()
            string_init(base + i * _TSTRING_BYTES)
            string_copy(base + i * _TSTRING_BYTES, data, len(data))
        return t
    code = {v: k for k, v in _DTYPES.items()}[value.dtype.type]
    t = allocate(code, dims, value.ndim, value.nbytes)
    ctypes.memmove(tensor_data(t), value.tobytes(), value.nbytes)
    return t


def _array(t) -> np.ndarray:
    shape = [dim(t, i) for i in range(num_dims(t))]
    base = tensor_data(t)
    if tensor_type(t) == _TF_STRING:
        items = [
            ctypes.string_at(
                string_data(base + i * _TSTRING_BYTES),
                string_size(base + i * _TSTRING_BYTES),
            )
            for i in range(int(np.prod(shape)))
        ]
        return np.array(items, dtype=object).reshape(shape)
    dtype = _DTYPES[tensor_type(t)]
    return np.frombuffer(ctypes.string_at(base, byte_size(t)), dtype).reshape(shape)


def _output(graph, tensor_name: str) -> _Output:
    name, index = tensor_name.split(":")
    op = operation(graph, name.encode())
    if not op:
        raise KeyError(f"no operation {name!r} in the loaded graph")
    return _Output(op, int(index))


def run(path: str, tag: str, signature_key: str, feeds: dict) -> dict:
    """Loads the `tag` MetaGraph of `path` with the C++ loader and runs one
    signature on `feeds` (input key -> numpy array)."""
    status, graph = new_status(), new_graph()
    meta_buffer = new_buffer()
    tags = (ctypes.c_char_p * 1)(tag.encode())
    session = load(
        new_options(), None, path.encode(), tags, 1, graph, meta_buffer, status
    )
    _check(status)
    meta = meta_graph_pb2.MetaGraphDef.FromString(
        ctypes.string_at(meta_buffer.contents.data, meta_buffer.contents.length)
    )
    signature = meta.signature_def[signature_key]
    keys = sorted(feeds)
    inputs = (_Output * len(keys))(
        *[_output(graph, signature.inputs[k].name) for k in keys]
    )
    values = (P * len(keys))(*[_tensor(np.asarray(feeds[k])) for k in keys])
    names = sorted(signature.outputs)
    outputs = (_Output * len(names))(
        *[_output(graph, signature.outputs[k].name) for k in names]
    )
    results = (P * len(names))()
    session_run(
        session,
        None,
        inputs,
        values,
        len(keys),
        outputs,
        results,
        len(names),
        None,
        0,
        None,
        status,
    )
    _check(status)
    return {name: _array(results[i]) for i, name in enumerate(names)}
