"""A SavedModel as TF Serving sees it: loaded from disk with the `serve`
tag in a fresh graph and session, its warm-up requests replayed as the
server replays them, its signatures run by their input keys.

The one home of "load like the server": the publish gate (`validation`),
`kerassave verify` and anything that serves an export read a version
through `Served`.

What TF Serving does, and so what is done here (its `saved_model_warmup`,
`predict_util`, `classifier` and `regressor`):

- at most `warmup.MAX_ROWS` (1000) warm-up records, else the load fails;
- a request's `signature_name` defaults to `serving_default` and must
  name a signature of the `serve` MetaGraph;
- Predict feeds exactly the signature's inputs by their keys (an alias the
  signature does not have fails), as the dtypes the request holds, to a
  signature of method predict, classify or regress;
- Classify and Regress need a signature of their own method with one input,
  fed the request's examples serialized (with a context, each example is
  the context followed by the example, merged as protobuf merges); the
  replies must hold `scores`/`classes` of shape [batch, K], or `outputs`
  of shape [batch] or [batch, 1];
- MultiInference runs classify and regress tasks that read one input
  tensor; a SessionRun log is not replayed (unimplemented in TF Serving).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import _tf_logs, modes, warmup

_REPLAYED = {
    "predict_log": "predict",
    "classify_log": "classify",
    "regress_log": "regress",
    "multi_inference_log": "multi_inference",
}

# TF's error codes are gRPC's status codes; the names TF Serving answers with.
CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class ServingError(ValueError):
    """A request TF Serving would refuse, in its words.

    Attributes:
      code: the gRPC status code's name TF Serving answers with
        ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", ...).
    """

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


def code_of(error: Exception) -> str:
    """The gRPC status code's name for an error a request ran into."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(error, tf.errors.OpError):
        return CODE_NAMES.get(error.error_code, "UNKNOWN")
    if isinstance(error, OSError):  # no SavedModel where one was expected
        return "NOT_FOUND"
    return "INTERNAL"


class Served:
    """One SavedModel loaded as TF Serving loads it.

    Example:

        with Served("/models/digits/1764070001") as served:
            served.run("serving_default", {"pixels": np.zeros([1, 64])})

    Args:
      path: the SavedModel directory.
      tags: the MetaGraph to load. Defaults to ("serve",).

    Attributes:
      load_seconds: how long the load took (restore and init op included).
      signatures: signature key -> `SignatureDef` (TF's own `__` keys left
        out).
      signature_defs: every `SignatureDef` of the MetaGraph, TF's own too
        (what TF Serving's GetModelMetadata answers with).
    """

    def __init__(self, path: str, tags=(modes.SERVE.tag,)):
        self.path = path
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        started = time.monotonic()
        try:
            with _tf_logs.quiet():
                meta = tf.compat.v1.saved_model.load(self.session, list(tags), path)
        except Exception:
            self.session.close()
            raise
        self.load_seconds = time.monotonic() - started
        self.signature_defs = dict(meta.signature_def)
        self.signatures = {
            k: v for k, v in self.signature_defs.items() if not k.startswith("__")
        }

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def signature(self, name: str):
        """The `SignatureDef` a request's `signature_name` selects."""
        key = name or modes.SERVE.signature_key
        if key not in self.signatures:
            raise ServingError(
                f'Serving signature key "{key}" not found (the version has '
                f"{sorted(self.signatures)}).",
                code="FAILED_PRECONDITION",
            )
        return self.signatures[key]

    def run(self, key: str, feeds: dict, outputs=()) -> dict:
        """Runs signature `key` on `feeds` (input key -> array); returns
        output key -> array, for the keys in `outputs` (all when empty).

        Raises:
          ServingError: `feeds` do not name exactly the signature's inputs.
          tf.errors.OpError: the graph failed (a dtype or shape TF refuses).
        """
        sig = self.signature(key)
        unknown = sorted(set(feeds) - set(sig.inputs))
        if unknown:
            raise ServingError(
                f"input tensor alias not found in signature: {unknown[0]}. "
                f"Inputs expected to be in the set {sorted(sig.inputs)}."
            )
        missing = sorted(set(sig.inputs) - set(feeds))
        if missing:
            raise ServingError(
                f"signature {key!r} needs inputs {missing}, which the request "
                "does not hold."
            )
        unknown = sorted(set(outputs) - set(sig.outputs))
        if unknown:
            raise ServingError(
                f"output tensor alias not found in signature: {unknown[0]}. "
                f"Outputs expected to be in the set {sorted(sig.outputs)}."
            )
        feed = {sig.inputs[k].name: v for k, v in feeds.items()}
        fetch = {
            k: v.name for k, v in sig.outputs.items() if k in outputs or not outputs
        }
        try:
            return self.session.run(fetch, feed)
        except (TypeError, ValueError) as e:  # refused before the graph ran
            raise ServingError(first_line(e)) from e

    # Warm-up, as TF Serving replays it on load.

    def replay_warmup(self) -> list[str]:
        """Replays the version's warm-up records; returns the problems TF
        Serving would fail the load with ([] when none)."""
        try:
            logs = warmup.read_logs(self.path)
        except (ImportError, tf.errors.OpError, ValueError) as e:
            return [f"cannot read the warm-up requests: {e}"]
        if len(logs) > warmup.MAX_ROWS:
            return [
                f"{len(logs)} warm-up records, more than TF Serving replays "
                f"({warmup.MAX_ROWS}): it fails the load"
            ]
        problems = []
        for index, log in enumerate(logs):
            kind = log.WhichOneof("log_type")
            try:
                if kind not in _REPLAYED:
                    raise ServingError(f"Unsupported log_type for warmup: {kind}")
                getattr(self, _REPLAYED[kind])(getattr(log, kind).request)
            except (ServingError, tf.errors.OpError, ValueError) as e:
                problems.append(f"warm-up record {index} ({kind}): {first_line(e)}")
        return problems

    # Requests, answered as TF Serving answers them: each takes the request
    # proto of tensorflow-serving-api and returns output key -> array.

    def predict(self, request) -> dict:
        """A `PredictRequest`; returns output key -> array (only those of
        its `output_filter`, when it has one)."""
        name = request.model_spec.signature_name
        sig = self.signature(name)
        methods = (
            signatures_lib.PREDICT_METHOD,
            signatures_lib.CLASSIFY_METHOD,
            signatures_lib.REGRESS_METHOD,
        )
        if sig.method_name not in methods:
            raise ServingError(
                f"Expected prediction signature method_name to be one of "
                f"{list(methods)}. Was: {sig.method_name}"
            )
        for index, (alias, tensor) in enumerate(sorted(request.inputs.items())):
            want = sig.inputs[alias].dtype if alias in sig.inputs else tensor.dtype
            if tensor.dtype != want:
                raise ServingError(
                    f"Expects arg[{index}] ({alias!r}) to be "
                    f"{_dtype_name(want)} but {_dtype_name(tensor.dtype)} is provided"
                )
        feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        key = name or modes.SERVE.signature_key
        return self.run(key, feeds, outputs=list(request.output_filter))

    def _examples_run(self, name: str, method: str, request) -> dict:
        key = name or modes.SERVE.signature_key
        sig = self.signature(key)
        if sig.method_name != method:
            raise ServingError(
                f"Expected {method.rsplit('/', 1)[-1]} signature method_name to be "
                f"{method}. Was: {sig.method_name}"
            )
        if len(sig.inputs) != 1:
            raise ServingError(f"Expected one input Tensor, got {len(sig.inputs)}.")
        examples = serialized_examples(request.input)
        (input_key,) = sig.inputs
        outputs = self.run(key, {input_key: np.asarray(examples, dtype=object)})
        return outputs, len(examples)

    def classify(self, request) -> dict:
        """A `ClassificationRequest`; returns `scores` and/or `classes`."""
        return self._answer(signatures_lib.CLASSIFY_METHOD, request)

    def regress(self, request) -> dict:
        """A `RegressionRequest`; returns `outputs`."""
        return self._answer(signatures_lib.REGRESS_METHOD, request)

    def _answer(self, method: str, request) -> dict:
        """A Classify or Regress request, its reply checked as TF Serving does."""
        name = request.model_spec.signature_name
        outputs, batch = self._examples_run(name, method, request)
        _CHECKS[method](outputs, batch)
        return outputs

    def multi_inference(self, request) -> dict:
        """A `MultiInferenceRequest`; returns signature key -> its outputs."""
        tasks = {}
        for task in request.tasks:
            name = task.model_spec.signature_name or modes.SERVE.signature_key
            sig = self.signature(name)
            if sig.method_name != task.method_name:
                raise ServingError(
                    f"Method name {task.method_name!r} of task {name!r} differs "
                    f"from its signature's {sig.method_name!r}."
                )
            tasks[name] = sig
        if len({v.name for sig in tasks.values() for v in sig.inputs.values()}) != 1:
            raise ServingError("Input tensor must be the same for all Signatures.")
        examples = np.asarray(serialized_examples(request.input), dtype=object)
        replies = {}
        for name, sig in tasks.items():
            (input_key,) = sig.inputs
            replies[name] = outputs = self.run(name, {input_key: examples})
            _CHECKS[sig.method_name](outputs, len(examples))
        return replies


def serialized_examples(request_input) -> list[bytes]:
    """The examples of a Classify/Regress `Input`, serialized as TF Serving
    feeds them: with a context, the context's bytes before each example's
    (protobuf merges the two, the example's features winning)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + e.SerializeToString() for e in listed.examples]
    raise ServingError("Input is empty: it holds no examples.")


def check_classify_outputs(outputs: dict, batch: int) -> None:
    """Raises ServingError unless `outputs` are what TF Serving's Classify
    reads: `scores` float and/or `classes` string, each [batch, K]."""
    scores = outputs.get(signatures_lib.SCORES_KEY)
    classes = outputs.get(signatures_lib.CLASSES_KEY)
    if scores is None and classes is None:
        raise ServingError(
            f"Expected classification signature outputs "
            f"{signatures_lib.SCORES_KEY!r} and/or {signatures_lib.CLASSES_KEY!r}."
        )
    expected = (
        (signatures_lib.SCORES_KEY, scores, "f"),
        (signatures_lib.CLASSES_KEY, classes, "OSU"),
    )
    for name, value, kind in expected:
        if value is None:
            continue
        if value.ndim != 2 or value.shape[0] != batch:
            raise ServingError(
                f"Expected Tensor shape: [{batch} K] but got {list(value.shape)} "
                f"for {name!r}."
            )
        if value.dtype.kind not in kind:
            raise ServingError(
                f"Expected {name!r} of another dtype, got {value.dtype}."
            )


def check_regress_outputs(outputs: dict, batch: int) -> None:
    """Raises ServingError unless `outputs` hold TF Serving's Regress
    `outputs`: float, [batch] or [batch, 1]."""
    value = outputs.get(signatures_lib.OUTPUTS_KEY)
    if value is None:
        raise ServingError(
            f"No output tensor named {signatures_lib.OUTPUTS_KEY!r} in the "
            "regression signature."
        )
    if value.shape not in ((batch,), (batch, 1)):
        raise ServingError(
            "Expected output Tensor shape to be either [batch_size] or "
            f"[batch_size, 1] but got {list(value.shape)}."
        )
    if value.dtype.kind != "f":
        raise ServingError(f"Expected output Tensor of DT_FLOAT, got {value.dtype}.")


def _dtype_name(enum: int) -> str:
    """TF's C++ name of a dtype ("float", "double"), as its errors say."""
    name = tf.dtypes.as_dtype(enum).name
    return {"float32": "float", "float64": "double"}.get(name, name)


def first_line(error: Exception) -> str:
    """The line of an error that says what went wrong (TF's "Graph execution
    error:" preamble skipped)."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and line != "Graph execution error:"]
    return lines[0] if lines else type(error).__name__


_CHECKS = {
    signatures_lib.CLASSIFY_METHOD: check_classify_outputs,
    signatures_lib.REGRESS_METHOD: check_regress_outputs,
}
