"""Warm-up requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays this TFRecord file of `PredictionLog` protos when it
loads a version, so the first real request after a version switch is not
the slow one. The protos come from the `tensorflow-serving-api` package
(the `serving` extra), imported only when warm-up requests are asked for.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from kerassave_callbacks import _fs, layout
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import modes, serving_signatures

MAX_ROWS = 1000


def serving_protos():
    """(predict_pb2, prediction_log_pb2), or a clear ImportError."""
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError as e:
        raise ImportError(
            "warmup_inputs needs the tensorflow-serving-api package, which "
            "requires TensorFlow 2.21 or newer. Install it with: pip install "
            "'tensorflow-serving-api==<your TensorFlow's major.minor>.*' (or, in "
            "a checkout of kerassave_callbacks, pip install -e '.[serving]')"
        ) from e
    return predict_pb2, prediction_log_pb2


def check(warmup_inputs) -> None:
    """What can be checked without the model: the package, and the rows of a
    dict of inputs or of a single array.

    Raises:
      ImportError: tensorflow-serving-api is not installed.
      ValueError: no rows, more than MAX_ROWS, or inputs of unequal rows.
    """
    serving_protos()
    if isinstance(warmup_inputs, Mapping):
        _rows(list(warmup_inputs.values()))
    elif not isinstance(warmup_inputs, (list, tuple)):
        _rows([warmup_inputs])


def _rows(values, argument: str = "warmup_inputs") -> int:
    counts = {len(a) if a.ndim else 0 for a in map(_array, values)} or {0}
    if len(counts) != 1:
        raise ValueError(
            f"{argument} must have the same number of rows in every input. "
            f"Received row counts {sorted(counts)}."
        )
    (rows,) = counts
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(
            f"{argument} must have 1 to {MAX_ROWS} rows (each becomes one "
            f"request TF Serving replays on every load). Received {rows}."
        )
    return rows


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=object if _is_text(value) else None)


def _is_text(value) -> bool:
    array = np.asarray(value)
    return array.dtype.kind in "OSU"


def records(
    input_structure, warmup_inputs, spec=None, keras_names: Mapping | None = None
) -> list[bytes]:
    """One serialized `PredictionLog` per row of `warmup_inputs`, a request
    to the `serving_default` signature: a `PredictRequest` of the model's
    inputs, or, when `serving_default` is `examples()`, `classify()` or
    `regress()`, a `PredictRequest`, `ClassificationRequest` or
    `RegressionRequest` of the rows as serialized `tf.Example`s.

    Args:
      input_structure: the model's inputs (named `tf.TensorSpec`s, as
        `specs.input_structure` returns them).
      warmup_inputs: an array (one input), a list of arrays (in input
        order) or a dict of input name -> array, as `model.predict` takes.
      spec: the `serving_default` spec (None: `predict()`).
      keras_names: Keras input name -> signature key; a dict of
        `warmup_inputs` may be keyed by either.

    Raises:
      ImportError: tensorflow-serving-api is not installed.
      ValueError: the inputs do not match the signature (names, dtypes,
        shapes) or have no rows or more than MAX_ROWS, or `serving_default`
        is a custom endpoint (whose inputs are not the model's).
    """
    if signatures_lib.is_endpoint(spec):
        raise ValueError(
            "warmup_inputs are rows of the model's inputs, but serving_default "
            "is a custom endpoint. Name the endpoint otherwise and keep "
            "serving_default a built-in signature, or drop warmup_inputs."
        )
    specs = tf.nest.flatten(input_structure)
    arrays = input_arrays(input_structure, warmup_inputs, keras_names)
    rows = [
        {name: array[row : row + 1] for name, array in arrays.items()}
        for row in range(len(arrays[specs[0].name]))
    ]
    if spec is None or spec.input_key is None:  # The model's own inputs.
        return [_predict_log(row, specs) for row in rows]
    features = serving_signatures.feature_spec(input_structure, spec)
    return [
        _examples_log(spec, serving_signatures.to_example(row, features))
        for row in rows
    ]


def input_arrays(
    input_structure,
    inputs,
    keras_names: Mapping | None = None,
    argument: str = "warmup_inputs",
) -> dict[str, np.ndarray]:
    """Signature key -> array of the rows `inputs` (an array, a list of
    arrays in input order, or a dict keyed by input name or signature key),
    checked against the model's inputs.

    Raises:
      ValueError: names, counts, dtypes or shapes that do not match, or no
        rows or more than MAX_ROWS (`argument` names the argument).
    """
    specs = tf.nest.flatten(input_structure)
    names = [spec.name for spec in specs]
    if isinstance(inputs, Mapping):
        keys = list(input_structure) if isinstance(input_structure, Mapping) else names
        if not isinstance(input_structure, Mapping):
            keyed = {(keras_names or {}).get(str(k), k): v for k, v in inputs.items()}
            inputs = keyed
        given = {str(k) for k in inputs}
        if given != {str(k) for k in keys}:
            raise ValueError(
                f"{argument} names inputs {sorted(given)}, but the serve "
                f"signature takes {sorted(str(k) for k in keys)}."
            )
        values = [inputs[k] for k in keys]
    elif isinstance(inputs, (list, tuple)) and len(specs) > 1:
        if len(inputs) != len(specs):
            raise ValueError(
                f"{argument} holds {len(inputs)} arrays, but the serve "
                f"signature takes {len(specs)} inputs {names}."
            )
        values = list(inputs)
    else:
        if len(specs) != 1:
            raise ValueError(
                f"{argument} is one array, but the serve signature takes "
                f"{len(specs)} inputs {names}: pass a dict of name -> array."
            )
        values = [inputs]
    _rows(values, argument)
    return {
        s.name: _checked(value, s, argument)
        for value, s in zip(values, specs, strict=True)
    }


def _predict_log(row: dict, specs) -> bytes:
    predict_pb2, prediction_log_pb2 = serving_protos()
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = modes.SERVE.signature_key
    for s in specs:
        request.inputs[s.name].CopyFrom(tf.make_tensor_proto(row[s.name], s.dtype))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def _examples_log(spec, example: bytes) -> bytes:
    """A request of one serialized example to `serving_default`, through the
    API of its method."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    predict_pb2, prediction_log_pb2 = serving_protos()
    if spec.method_name == signatures_lib.PREDICT_METHOD:
        request = predict_pb2.PredictRequest()
        request.inputs[spec.input_key].CopyFrom(
            tf.make_tensor_proto([example], tf.string)
        )
        field, log_type = "predict_log", prediction_log_pb2.PredictLog
    else:
        if spec.method_name == signatures_lib.CLASSIFY_METHOD:
            request = classification_pb2.ClassificationRequest()
            field, log_type = "classify_log", prediction_log_pb2.ClassifyLog
        else:
            request = regression_pb2.RegressionRequest()
            field, log_type = "regress_log", prediction_log_pb2.RegressLog
        request.input.example_list.examples.add().ParseFromString(example)
    request.model_spec.signature_name = modes.SERVE.signature_key
    log = prediction_log_pb2.PredictionLog(**{field: log_type(request=request)})
    return log.SerializeToString()


def _checked(value, spec: tf.TensorSpec, argument: str) -> np.ndarray:
    text = _is_text(value)
    if text != (spec.dtype == tf.string):
        raise ValueError(
            f"{argument}[{spec.name!r}] holds "
            f"{'strings' if text else 'numbers'}, but the serve signature "
            f"takes {spec.dtype.name}."
        )
    array = np.asarray(value, dtype=object if text else spec.dtype.as_numpy_dtype)
    if not spec.shape.is_compatible_with(array.shape):
        raise ValueError(
            f"{argument}[{spec.name!r}] has shape {array.shape}, but the "
            f"serve signature takes {spec.shape} (rows first)."
        )
    return array


def write(path: str, logs: list[bytes]) -> None:
    """Writes the records as the version's warm-up file."""
    target = posixpath.join(path, layout.WARMUP_REQUESTS)
    _fs.makedirs(posixpath.dirname(target))
    with tf.io.TFRecordWriter(target) as writer:
        for log in logs:
            writer.write(log)


def read(path: str) -> list:
    """The requests of a version's warm-up file ([] when none):
    `PredictRequest`s, `ClassificationRequest`s or `RegressionRequest`s."""
    return [
        getattr(log, log.WhichOneof("log_type")).request
        for log in read_logs(path)
        if log.WhichOneof("log_type") is not None
    ]


def read_logs(path: str) -> list:
    """The `PredictionLog`s of a version's warm-up file ([] when none)."""
    target = posixpath.join(path, layout.WARMUP_REQUESTS)
    if not _fs.exists(target):
        return []
    _, prediction_log_pb2 = serving_protos()
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(target)
    ]
