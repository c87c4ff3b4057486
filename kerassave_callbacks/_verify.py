"""What `kerassave inspect` and `verify` read of a SavedModel: its
signatures, and whether TF Serving could load and run it.

Imports TensorFlow, so the command line imports this module only for the
subcommands that read graphs.
"""

from __future__ import annotations

import dataclasses
import posixpath

import numpy as np
import tensorflow as tf

from kerassave_callbacks import _files, _fs, fields, layout
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import (
    loader,
    modes,
    serving_signatures,
    validation,
    warmup,
)
from kerassave_callbacks.core import served as served_lib
from kerassave_callbacks.publish_gate import PublishGate


def _tensor(info) -> dict:
    shape = (
        None
        if info.tensor_shape.unknown_rank
        else [d.size for d in info.tensor_shape.dim]
    )
    return {"dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}


def signatures(saved) -> dict:
    """{tags: {key: {method_name, inputs, outputs}}} of a SavedModel proto."""
    tags = {}
    for meta in saved.meta_graphs:
        tags[",".join(meta.meta_info_def.tags)] = {
            key: {
                "method_name": sig.method_name,
                "inputs": {k: _tensor(v) for k, v in sorted(sig.inputs.items())},
                "outputs": {k: _tensor(v) for k, v in sorted(sig.outputs.items())},
            }
            for key, sig in sorted(meta.signature_def.items())
            if not key.startswith("__")
        }
    return tags


# Checking, the way TF Serving loads a version.


@dataclasses.dataclass
class _Row:
    """One example to run every signature on: the model's input values
    (name -> array with a batch of one) and the same as a `tf.Example`."""

    values: dict
    example: bytes


def _rows(requests, default) -> list[_Row]:
    """The rows of the warm-up requests; without any, one row of zeros of
    `default`'s inputs (when it takes the model's inputs)."""
    if not requests:
        if default is None or _takes_examples(default):
            return []
        values = validation.zero_feeds(default)
        return [_Row(values, _example_of(values))]
    rows = []
    for request in requests:
        if hasattr(request, "input"):  # Classification or Regression.
            examples = request.input.example_list.examples
            rows += [_row_of(e.SerializeToString()) for e in examples]
        elif _is_examples_input(request.inputs):
            (examples,) = request.inputs.values()
            rows += [_row_of(e) for e in tf.make_ndarray(examples).reshape(-1)]
        else:
            values = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            rows.append(_Row(values, _example_of(values)))
    return rows


def _is_examples_input(inputs) -> bool:
    """Whether `inputs` (of a signature or a request) are the one string
    input of a Predict kind that takes serialized examples (`examples()`,
    or a registered kind's `input_key`)."""
    keys = {
        kind.input_key
        for kind in signatures_lib.KINDS.values()
        if kind.input_key and kind.method_name == signatures_lib.PREDICT_METHOD
    }
    if len(inputs) != 1 or not keys & set(inputs):
        return False
    (value,) = inputs.values()
    return value.dtype == tf.string.as_datatype_enum


def _example_of(values: dict) -> bytes:
    kinds = {}
    for name, value in values.items():
        array = np.asarray(value)
        text = array.dtype.kind in "OSU"
        dtype = (
            tf.string
            if text
            else serving_signatures.example_dtype(tf.as_dtype(array.dtype))
        )
        kinds[name] = tf.io.FixedLenFeature([], dtype)
    return serving_signatures.to_example(
        {k: np.asarray(v)[0] for k, v in values.items()}, kinds
    )


def _row_of(serialized: bytes) -> _Row:
    example = tf.train.Example.FromString(serialized)
    values = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        dtype = {"bytes_list": object, "int64_list": np.int64}.get(kind, np.float32)
        values[name] = np.asarray([list(getattr(feature, kind).value)], dtype=dtype)
    return _Row(values, serialized)


def _takes_examples(sig) -> bool:
    """Whether a signature's one input is a batch of serialized examples."""
    methods = (signatures_lib.CLASSIFY_METHOD, signatures_lib.REGRESS_METHOD)
    return sig.method_name in methods or _is_examples_input(sig.inputs)


def _feeds(sig, row: _Row) -> dict | None:
    """Input key -> value of `row` for `sig`; None when `row` does not hold
    the signature's inputs (a custom endpoint's, say)."""
    if _takes_examples(sig):
        (key,) = sig.inputs
        return {key: np.asarray([row.example], dtype=object)}
    if not set(sig.inputs) <= set(row.values):
        return None
    return {k: _shaped(row.values[k], info) for k, info in sig.inputs.items()}


def _shaped(value, info) -> np.ndarray:
    """`value` (one row) in the shape and dtype of the input `info`."""
    dtype = tf.dtypes.as_dtype(info.dtype)
    array = np.asarray(
        value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype
    )
    if not info.tensor_shape.unknown_rank:
        shape = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
        if shape and int(np.prod(shape)) == array.size:
            array = array.reshape(shape)
    return array


def verify_version(path: str, *, versioned: bool = False) -> list[str]:
    """The problems TF Serving would have with one SavedModel ([] when none):
    the publish gate's checks (`validation.check`: loaded with tag `serve`
    in a fresh session, warm-up replayed as TF Serving replays it, every
    serve signature run on the warm-up rows or zeros), every other
    MetaGraph loaded, and the serve answers of a TF1 session and of
    `tf.saved_model.load` compared.

    With `versioned` (a version of an export directory), its
    `export_info.json` is required too.
    """
    extra = (layout.EXPORT_INFO,) if versioned else ()
    missing = _files.missing_files(path, extra)
    if missing:
        return [f"missing {', '.join(missing)}"]
    try:
        saved = loader.read_saved_model(path)
        loader.read_all_values(loader.open_checkpoint(path), path)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    problems = _info_problems(path)
    try:
        requests = warmup.read(path)
    except (ImportError, tf.errors.OpError, ValueError) as e:
        requests = []
        problems.append(f"cannot read {layout.WARMUP_REQUESTS}: {e}")
    for meta in saved.meta_graphs:
        tags = list(meta.meta_info_def.tags)
        if modes.SERVE.tag in tags:
            problems += _check_serving(path, meta, requests)
            continue
        try:
            served_lib.Served(path, tags).close()
        except Exception as e:  # Whatever TF raises is the finding.
            problems.append(
                f"tags {tags}: {type(e).__name__}: {served_lib.first_line(e)}"
            )
    return problems


def _info_problems(path: str) -> list[str]:
    info_path = posixpath.join(path, layout.EXPORT_INFO)
    if not _fs.exists(info_path):
        return []
    value = export_dir_lib.read_json(info_path)
    if value is None:
        return [f"{layout.EXPORT_INFO} is not valid JSON"]
    info, problems = fields.check(value, layout.INFO_FIELDS)
    problems = [f"{layout.EXPORT_INFO}: {p}" for p in problems]
    name = posixpath.basename(path.rstrip("/"))
    if name.isdigit() and info["version"] != int(name):
        problems.append(
            f"{layout.EXPORT_INFO} names version {info['version']}, not {name}"
        )
    return problems


def _check_serving(path: str, meta, requests) -> list[str]:
    """The gate's checks on the serve MetaGraph, fed the warm-up rows, then
    the same feeds through `tf.saved_model.load`."""
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    if modes.SERVE.signature_key not in sigs:
        return [f"no {modes.SERVE.signature_key} signature"]
    rows = _rows(requests, sigs[modes.SERVE.signature_key])
    feeds = {}
    for key, sig in sigs.items():
        fed = [_feeds(sig, row) for row in rows]
        if fed and all(f is not None for f in fed):
            feeds[key] = {k: np.concatenate([f[k] for f in fed]) for k in fed[0]}
    ran: dict = {}
    problems = validation.check(
        path,
        PublishGate(),
        feeds=feeds,
        source="the warm-up rows" if requests else "rows of zeros",
        ran=ran,
    )
    if requests and not problems:  # Zeros only show that every signature runs.
        problems += _compare_tf2(path, feeds, ran)
    return problems


def _compare_tf2(path: str, feeds: dict, ran: dict) -> list[str]:
    loaded = tf.saved_model.load(path, tags=[modes.SERVE.tag])
    problems = []
    for key, fed in sorted(feeds.items()):
        direct = loaded.signatures[key](**{k: tf.constant(v) for k, v in fed.items()})
        for name, value in ran.get(key, {}).items():
            if not _same(direct[name].numpy(), value):
                problems.append(
                    f"signature {key!r}, warm-up rows: output {name!r} differs "
                    "between a TF1 session and tf.saved_model.load"
                )
    return problems


def _same(a, b) -> bool:
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        return np.array_equal(a, b)
    return np.allclose(a, b, atol=1e-5, equal_nan=True)
