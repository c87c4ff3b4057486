"""TF Serving's REST JSON, turned into its request protos and back (its
`api_rest` documentation and `json_tensor`):

- predict: row format (`instances`, a list with one entry per row: the value
  of the only input, or an object of input name -> value) or columnar
  format (`inputs`: the only input's value, or an object of input name ->
  value); replies `{"predictions": ...}` or `{"outputs": ...}` in the same
  format, without names when the signature has one output;
- classify and regress: `examples` (objects of feature name -> value or
  list), an optional `context` merged into each; replies `{"results": ...}`;
- binary strings as `{"b64": "..."}` both ways (outputs whose key ends in
  `_bytes`, or are not UTF-8); numbers take the signature's dtype, and an
  integer input refuses a fraction instead of losing it.

Every problem is a `ServingError` (INVALID_ARGUMENT) naming the value.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from kerassave_callbacks.core import served as served_lib

ServingError = served_lib.ServingError
ROW, COLUMNAR = "row", "columnar"


# Predict.


def format_of(body: dict) -> str:
    """A predict body's format: ROW (`instances`) or COLUMNAR (`inputs`)."""
    return ROW if "instances" in body else COLUMNAR


def fill_predict_request(body, request, inputs: dict) -> None:
    """Fills `request.inputs` from a predict body.

    Args:
      body: the parsed JSON body.
      request: a `PredictRequest` (model spec and signature filled).
      inputs: the signature's input key -> `TensorInfo`.
    """
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise ServingError(
            "Missing 'inputs' or 'instances' key"
            if not has_rows
            else "Not both 'instances' and 'inputs' can be specified"
        )
    if has_rows:
        columns = _columns_of_rows(body["instances"], inputs)
    else:
        columns = _named(body["inputs"], inputs, "inputs")
    for key, value in columns.items():
        dtype = tf.dtypes.as_dtype(inputs[key].dtype)
        array = to_array(value, dtype, key)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))


def _columns_of_rows(rows, inputs: dict) -> dict:
    if not isinstance(rows, list) or not rows:
        raise ServingError(
            f"Expecting 'instances' value to be a non-empty list, got {_short(rows)}"
        )
    named = [_named(row, inputs, f"instances[{i}]") for i, row in enumerate(rows)]
    return {key: [row[key] for row in named] for key in named[0]}


def _named(value, inputs: dict, where: str) -> dict:
    """Input key -> value: an object of them, or the only input's value."""
    if isinstance(value, dict) and not _is_b64(value):
        unknown = sorted(set(value) - set(inputs))
        missing = sorted(set(inputs) - set(value))
        if unknown or missing:
            raise ServingError(
                f"{where}: the signature's inputs are {sorted(inputs)}; "
                f"unknown {unknown}, missing {missing}"
            )
        return value
    if len(inputs) != 1:
        raise ServingError(
            f"{where}: the signature has inputs {sorted(inputs)}; give an "
            'object of input name -> value, e.g. {"' + sorted(inputs)[0] + '": ...}'
        )
    return {next(iter(inputs)): value}


def to_array(value, dtype: tf.dtypes.DType, key: str) -> np.ndarray:
    """A JSON value (nested lists) as an array of `dtype`."""
    fast = None if dtype == tf.string else _numbers(value, dtype)
    if fast is not None:
        return fast
    shape = _shape(value, key)
    flat = list(_leaves(value))
    if dtype == tf.string:
        array = np.array([_bytes(v, key) for v in flat], dtype=object)
    else:
        array = np.array([_number(v, dtype, key) for v in flat], dtype=object)
        array = array.astype(dtype.as_numpy_dtype)
    return array.reshape(shape)


def _numbers(value, dtype: tf.dtypes.DType) -> np.ndarray | None:
    """`value` as `dtype` in one numpy call, when it is a rectangular array of
    numbers that fit (None sends it to the slow path, which names the
    problem)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    kind = array.dtype.kind
    if dtype == tf.bool:
        fits = kind == "b"
    elif dtype.is_integer:
        fits = kind in "iu" or (kind == "f" and bool(np.all(np.mod(array, 1) == 0)))
    else:
        fits = kind in "iuf"
    return array.astype(dtype.as_numpy_dtype) if fits else None


def _shape(value, key: str) -> list[int]:
    if not isinstance(value, list):
        return []
    shapes = [_shape(v, key) for v in value]
    if any(s != shapes[0] for s in shapes):
        raise ServingError(
            f"Input {key!r} is ragged: its entries have shapes "
            f"{sorted({tuple(s) for s in shapes})}; every row needs the same shape"
        )
    return [len(value)] + (shapes[0] if shapes else [])


def _leaves(value):
    if isinstance(value, list):
        for entry in value:
            yield from _leaves(entry)
    else:
        yield value


def _bytes(value, key: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        return _b64decode(value["b64"], key)
    raise ServingError(
        f"Input {key!r} is a string tensor; got {_short(value)}: give a "
        'string, or {"b64": "..."} for binary data'
    )


def _number(value, dtype: tf.dtypes.DType, key: str):
    if dtype == tf.bool and isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServingError(
            f"Input {key!r} is {dtype.name}; got {_short(value)}, not a number"
        )
    if dtype.is_integer and isinstance(value, float) and not value.is_integer():
        raise ServingError(
            f"Input {key!r} is {dtype.name}; {value} would lose precision"
        )
    return value


def predict_json(reply, request_format: str) -> dict:
    """A `PredictResponse` as TF Serving's REST API writes it."""
    outputs = {k: tf.make_ndarray(v) for k, v in reply.outputs.items()}
    if request_format == COLUMNAR:
        values = {k: _json_value(v, k) for k, v in outputs.items()}
        single = len(values) == 1
        return {"outputs": next(iter(values.values())) if single else values}
    batch = _batch(outputs)
    values = {k: _json_value(v, k) for k, v in outputs.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(batch)]}


def _batch(outputs: dict) -> int:
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    first = next(iter(sizes.values()))
    for key, size in sizes.items():
        if size is None or size != first:
            raise ServingError(
                f"Tensor name: {key} has inconsistent batch size: {size} "
                f"expecting: {first} (use the columnar 'inputs' format)"
            )
    return first


def _json_value(array: np.ndarray, key: str):
    if array.dtype == object:
        binary = key.endswith("_bytes")
        flat = [_text_or_b64(v, binary) for v in array.reshape([-1])]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _text_or_b64(value: bytes, binary: bool):
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


# Classify and regress.


def fill_examples_request(body, request) -> None:
    """Fills a Classify or Regress request's `input` from its body."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ServingError(
            "Expecting 'examples' to be a non-empty list of objects of feature "
            f"name -> value, got {_short(examples)}"
        )
    context = body.get("context")
    if context is not None:
        target = request.input.example_list_with_context
        _fill_example(target.context, context, "context")
    else:
        target = request.input.example_list
    for index, example in enumerate(examples):
        _fill_example(target.examples.add(), example, f"examples[{index}]")


def _fill_example(example, features, where: str) -> None:
    if not isinstance(features, dict):
        raise ServingError(f"{where} is {_short(features)}, not an object")
    for name, value in features.items():
        _fill_feature(example.features.feature[name], value, f"{where}.{name}")


def _fill_feature(feature, value, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ServingError(f"{where} is an empty list: its type is unknown")
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        feature.bytes_list.value.extend(_bytes(v, where) for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(values)
    else:
        raise ServingError(
            f"{where} is {_short(value)}: a feature holds numbers or strings "
            "(or a list of one kind)"
        )


def classify_json(reply) -> dict:
    return {
        "results": [
            [[c.label, c.score] for c in row.classes]
            for row in reply.result.classifications
        ]
    }


def regress_json(reply) -> dict:
    return {"results": [r.value for r in reply.result.regressions]}


# Status and metadata.


def message_json(message) -> dict:
    """A proto as TF Serving's REST API writes it (field names as in the
    proto, fields at their defaults too)."""
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
    )


def metadata_json(reply) -> dict:
    """A `GetModelMetadataResponse` with its signature map unpacked."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(signature_map)
    return {
        "model_spec": message_json(reply.model_spec),
        "metadata": {"signature_def": message_json(signature_map)},
    }


# Helpers.


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _b64decode(text, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise ServingError(f"Input {key!r}: {_short(text)} is not base64: {e}") from e


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
