"""The publish gate: a staged version, loaded as TF Serving loads it, must
replay its warm-up requests and answer as the model itself does.

Three steps, so that each runs where it must:

- `requests(graphs, gate, warmup_inputs)`, once per traced graphs: the
  validation rows (the gate's `inputs`, else the warm-up rows, else rows
  drawn from the input specs) as each serve signature is fed them;
- `answers(graphs, requests)`, at every export in the caller's thread
  (Keras code runs only there, and the model moves on after the
  snapshot): what `model(x, training=False)` answers, through the same
  code as each signature (`serving_signatures.answer_of`);
- `check(path, ...)`, on the staged directory before the rename (in the
  writer thread for async exports): load (`served.Served`), replay the
  warm-up, run every signature and compare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from absl import logging

from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import served as served_lib
from kerassave_callbacks.core import serving_signatures, warmup

# Rows drawn from the input specs: this many when the batch is free.
_DRAWN_ROWS = 2


class GateFailure(ValueError):
    """A SavedModel failed the publish gate; `problems` says why.

    `export_saved_model` raises it (nothing is left at the path);
    `VersionedExporter` raises `ExportRejectedError` instead.

    Example:

        try:
            export_saved_model(model, "/tmp/model")
        except GateFailure as e:
            print(e.problems)

    Attributes:
      problems: one line per failed check.
    """

    def __init__(self, path: str, problems: list[str]):
        super().__init__(
            f"{path} failed the publish gate, so it is not published: "
            + "; ".join(problems)
        )
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Requests:
    """The validation rows of one model's graphs.

    Attributes:
      rows: input signature key -> array (a batch of rows).
      feeds: serve signature key -> input key -> array (the rows as that
        signature takes them; a custom endpoint is fed `rows` when it takes
        the model's inputs, else only loaded).
      source: where the rows come from, for messages.
      drawn: True when the rows were made up from the input specs (the
        model may refuse them; then nothing is compared).
    """

    rows: Mapping
    feeds: Mapping
    source: str
    drawn: bool


def requests(graphs, gate, warmup_inputs) -> Requests:
    """The validation rows of `graphs` (a `ModeGraphs`) as each serve
    signature takes them.

    Raises:
      ValueError: the gate's `inputs` do not fit the model's inputs.
    """
    traced = graphs.traced
    given, source = gate.inputs, "the PublishGate's inputs"
    if given is None:
        given, source = warmup_inputs, "the warm-up rows"
    specs = traced.specs or {signatures_lib.DEFAULT_KEY: signatures_lib.predict()}
    if given is None:
        rows = _drawn(traced.inputs, _feature_shapes(specs))
        source = "rows drawn from the input specs"
    else:
        rows = warmup.input_arrays(
            traced.inputs,
            tf.nest.map_structure(lambda a: np.asarray(a)[: gate.MAX_ROWS], given),
            graphs.names["inputs"],
            "PublishGate(inputs=...)" if gate.inputs is not None else "warmup_inputs",
        )
    feeds = {
        key: _feeds(spec, rows, traced.inputs)
        for key, spec in specs.items()
        if not signatures_lib.is_endpoint(spec)
    }
    return Requests(rows, feeds, source, drawn=given is None)


def _feature_shapes(specs: Mapping) -> dict:
    """Input name -> the inner shape a user's `feature_spec` gives it."""
    shapes = {}
    for spec in specs.values():
        for name, feature in (getattr(spec, "feature_spec", None) or {}).items():
            shapes[name] = list(feature.shape)
    return shapes


def _drawn(inputs, feature_shapes: dict) -> dict:
    """Rows made up from the input specs: uniform floats in [0, 1), zeros
    of integers and bools, empty strings; a free inner dimension takes its
    size from a `feature_spec`, else 1."""
    rng = np.random.default_rng(0)
    rows = {}
    for spec in tf.nest.flatten(inputs):
        dims = spec.shape.as_list() if spec.shape.rank is not None else [None]
        inner = feature_shapes.get(spec.name)
        if inner is None or len(inner) != len(dims) - 1:
            inner = [1 if d is None else d for d in dims[1:]]
        shape = [_DRAWN_ROWS if dims[0] is None else dims[0]] + inner
        if spec.dtype == tf.string:
            rows[spec.name] = np.full(shape, b"", dtype=object)
        elif spec.dtype.is_floating:
            rows[spec.name] = rng.random(shape).astype(spec.dtype.as_numpy_dtype)
        else:
            rows[spec.name] = np.zeros(shape, spec.dtype.as_numpy_dtype)
    return rows


def _feeds(spec, rows: dict, inputs) -> dict:
    if spec.input_key is None:  # predict(): the model's own inputs.
        return dict(rows)
    features = serving_signatures.feature_spec(inputs, spec)
    count = len(next(iter(rows.values())))
    examples = [
        serving_signatures.to_example({k: v[i] for k, v in rows.items()}, features)
        for i in range(count)
    ]
    return {spec.input_key: np.asarray(examples, dtype=object)}


def answers(graphs, requests: Requests) -> dict | None:
    """Serve signature key -> output key -> what the model itself answers
    on the rows (`model(x, training=False)`, now); None when the model
    refuses rows drawn from its specs (a warning says so).

    Raises:
      ValueError: the model refuses the rows it was given.
    """
    traced = graphs.traced
    flat = tf.nest.flatten(traced.inputs)
    x = tf.nest.pack_sequence_as(
        traced.inputs, [tf.constant(requests.rows[s.name]) for s in flat]
    )
    try:
        outputs = graphs.model(x, training=False)
    except Exception as e:
        if not requests.drawn:
            raise ValueError(
                f"Model {graphs.model.name!r} cannot run {requests.source}: {e}"
            ) from e
        logging.warning(
            "The publish gate compares no answers of model %r: it cannot run "
            "%s (%s). Pass PublishGate(inputs=...) with real rows.",
            graphs.model.name,
            requests.source,
            e,
        )
        return None
    named = dict(zip(traced.output_names, tf.nest.flatten(outputs), strict=True))
    structured = traced.predict.get_concrete_function().structured_outputs
    output_specs = {n: tf.TensorSpec(t.shape, t.dtype) for n, t in structured.items()}
    specs = traced.specs or {signatures_lib.DEFAULT_KEY: signatures_lib.predict()}
    found = {}
    for key, spec in specs.items():
        answer = serving_signatures.answer_of(spec, named, output_specs, graphs.model)
        if answer is not None:
            found[key] = {k: np.asarray(v) for k, v in answer.items()}
    return found


def gate_problems(path: str, gate, requests: Requests, answers, model) -> list[str]:
    """`check` of a staged SavedModel of `model` against its `requests` and
    the model's `answers`, as the exporters run it before the rename."""
    return check(
        path,
        gate,
        feeds=requests.feeds,
        rows=requests.rows,
        answers=answers,
        source=requests.source,
        low_precision=low_precision(model),
    )


def low_precision(model) -> bool:
    """Whether the model computes in float16 or bfloat16 (mixed precision)."""
    return str(getattr(model, "compute_dtype", "float32")) in ("float16", "bfloat16")


def check(
    path: str,
    gate,
    *,
    feeds: Mapping | None = None,
    rows: Mapping | None = None,
    answers: Mapping | None = None,
    source: str = "rows of zeros",
    low_precision: bool = False,
    ran: dict | None = None,
) -> list[str]:
    """The problems TF Serving would have with the SavedModel at `path`,
    and the answers that differ from `answers` ([] when none).

    Args:
      path: the SavedModel directory (staged or published).
      gate: the `PublishGate` (load limit, tolerances).
      feeds: signature key -> input key -> array. Defaults to None.
      rows: input key -> array, fed to a signature not in `feeds` whose
        inputs are all among them (a custom endpoint that takes the
        model's inputs); any other signature is only loaded, not run
        (no made-up input would be one it accepts). Defaults to None.
      answers: signature key -> output key -> the expected array; None
        compares nothing. Defaults to None.
      source: what the feeds are, for messages. Defaults to zeros.
      low_precision: use the looser default tolerances. Defaults to False.
      ran: if given, filled with signature key -> the outputs it gave.
        Defaults to None.
    """
    try:
        served = served_lib.Served(path)
    except Exception as e:  # Whatever TF raises is the finding.
        return [f"TF Serving could not load it: {served_lib.first_line(e)}"]
    with served:
        problems = []
        if served.load_seconds > gate.load_seconds:
            problems.append(
                f"it took {served.load_seconds:.1f}s to load, more than "
                f"load_seconds={gate.load_seconds}"
            )
        problems += served.replay_warmup()
        missing = sorted(set(feeds or {}) - set(served.signatures))
        problems += [f"signature {k!r} is missing" for k in missing]
        tolerances = gate.tolerances(low_precision)
        for key, sig in sorted(served.signatures.items()):
            fed = _fed(key, sig, feeds or {}, rows or {})
            if fed is None:
                continue
            try:
                outputs = served.run(key, fed)
            except Exception as e:
                line = served_lib.first_line(e)
                problems.append(f"signature {key!r} failed on {source}: {line}")
                continue
            if ran is not None:
                ran[key] = outputs
            expected = (answers or {}).get(key)
            if expected is not None:
                problems += _compared(key, outputs, expected, tolerances, source)
    return problems


def _fed(key: str, sig, feeds: Mapping, rows: Mapping) -> dict | None:
    if key in feeds:
        return feeds[key]
    if sig.inputs and set(sig.inputs) <= set(rows):
        return {k: rows[k] for k in sig.inputs}
    return None


def zero_feeds(sig) -> dict:
    """Input key -> a row of zeros (or empty strings) for a `SignatureDef`."""
    feeds = {}
    for key, info in sig.inputs.items():
        dtype = tf.dtypes.as_dtype(info.dtype)
        dims = [] if info.tensor_shape.unknown_rank else info.tensor_shape.dim
        shape = [1 if d.size < 0 else d.size for d in dims]
        if shape:
            shape[0] = 1 if dims[0].size < 0 else shape[0]
        if dtype == tf.string:
            feeds[key] = np.full(shape, b"", dtype=object)
        else:
            feeds[key] = np.zeros(shape, dtype=dtype.as_numpy_dtype)
    return feeds


def _compared(key, outputs: dict, expected: dict, tolerances, source) -> list[str]:
    rtol, atol = tolerances
    problems = []
    for name, want in sorted(expected.items()):
        got = outputs.get(name)
        if got is None:
            problems.append(f"signature {key!r} has no output {name!r}")
            continue
        why = _difference(np.asarray(got), want, rtol, atol)
        if why:
            problems.append(
                f"signature {key!r}, output {name!r} on {source}: {why} than "
                "what the model answers (the graphs serve another model: a "
                "Python attribute read while tracing, say)"
            )
    return problems


def _difference(got: np.ndarray, want: np.ndarray, rtol, atol) -> str | None:
    """Why `got` is not `want`, or None when they match."""
    if got.shape != want.shape and got.size == want.size:
        got = got.reshape(want.shape)
    if got.shape != want.shape:
        return f"shape {list(got.shape)} rather {list(want.shape)}: other"
    if want.dtype.kind in "OSU" or got.dtype.kind in "OSU":
        return None if np.array_equal(got, want) else "other values"
    got, want = got.astype(np.float64), want.astype(np.float64)
    if np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        return None
    worst = float(np.nanmax(np.abs(got - want)))
    return f"values up to {worst:.3g} apart (rtol={rtol}, atol={atol}): other"
