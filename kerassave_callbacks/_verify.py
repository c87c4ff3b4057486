"""What `kerassave inspect` and `verify` read of a SavedModel: its
signatures, and whether TF Serving could load and run it.

Imports TensorFlow, so the command line imports this module only for the
subcommands that read graphs.
"""

from __future__ import annotations

import posixpath

import numpy as np
import tensorflow as tf

from kerassave_callbacks import _files, layout
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks.core import _tf_logs, loader, modes, warmup


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


def _feed_for(info, request) -> np.ndarray:
    return tf.make_ndarray(request) if request is not None else _one_row(info)


def _one_row(info) -> np.ndarray:
    dtype = tf.dtypes.as_dtype(info.dtype)
    shape = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
    if shape:
        shape[0] = 1
    if dtype == tf.string:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=dtype.as_numpy_dtype)


def verify_version(path: str, *, versioned: bool = False) -> list[str]:
    """The problems TF Serving would have with one SavedModel ([] when none).

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
    problems = []
    info_path = posixpath.join(path, layout.EXPORT_INFO)
    if tf.io.gfile.exists(info_path):
        info = export_dir_lib.read_info(path)
        name = posixpath.basename(path.rstrip("/"))
        if not info:
            problems.append(f"{layout.EXPORT_INFO} is not valid JSON")
        elif name.isdigit() and info.get("version") != int(name):
            problems.append(
                f"{layout.EXPORT_INFO} names version {info.get('version')}, not {name}"
            )
    try:
        requests = warmup.read(path)
    except (ImportError, tf.errors.OpError, ValueError) as e:
        requests = []
        problems.append(f"cannot read {layout.WARMUP_REQUESTS}: {e}")
    for meta in saved.meta_graphs:
        tags = list(meta.meta_info_def.tags)
        try:
            problems += _load_and_run(path, tags, requests)
        except Exception as e:  # Whatever TF raises is the finding.
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            problems.append(f"tags {tags}: {type(e).__name__}: {message}".rstrip(": "))
    return problems


def _load_and_run(path: str, tags: list[str], requests) -> list[str]:
    """Loads one MetaGraph in a fresh TF1 session (restore and init op, as TF
    Serving does) and, for `serve`, runs `serving_default` on the warm-up
    requests (or on one row of zeros), comparing each warm-up reply with the
    signature run through `tf.saved_model.load`."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        with _tf_logs.quiet():
            meta = tf.compat.v1.saved_model.load(sess, tags, path)
        if modes.SERVE.tag not in tags:
            return []
        sig = meta.signature_def.get(modes.SERVE.signature_key)
        if sig is None:
            return [f"tags {tags}: no {modes.SERVE.signature_key} signature"]
        fetch = {k: v.name for k, v in sig.outputs.items()}
        runs = []
        for request in requests or [None]:
            given = dict(request.inputs) if request is not None else {}
            feeds = {k: _feed_for(v, given.get(k)) for k, v in sig.inputs.items()}
            outputs = sess.run(fetch, {sig.inputs[k].name: v for k, v in feeds.items()})
            runs.append((feeds, outputs))
    if not requests:
        return []
    fn = tf.saved_model.load(path, tags=tags).signatures[modes.SERVE.signature_key]
    problems = []
    for index, (feeds, outputs) in enumerate(runs):
        direct = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        for key, value in outputs.items():
            if not np.allclose(direct[key].numpy(), value, atol=1e-5, equal_nan=True):
                problems.append(
                    f"warm-up request {index}: output {key!r} differs between "
                    "a TF1 session and tf.saved_model.load"
                )
    return problems
