"""`export_saved_model`: one SavedModel with train / eval / serve graphs."""

from __future__ import annotations

import time

import tensorflow as tf

from kerassave_callbacks import _files, _fs, publish_gate
from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import keras_api, mode_graphs, validation


class SavedModelExistsError(FileExistsError, AssertionError):
    """The export path already holds files.

    Subclasses `AssertionError` as well, because
    `tf.keras.experimental.export_saved_model` raised that: callers written
    against it keep working.

    Example:

        try:
            export_saved_model(model, "/tmp/my_model")
        except SavedModelExistsError:
            export_saved_model(model, "/tmp/my_model_2")
    """


def check_model(model) -> None:
    """Raises TypeError unless `model` is a `keras.Model` or a
    `tf_keras.Model`."""
    keras_api.adapter_for(model)


def check_empty_target(saved_model_path: str) -> None:
    """Raises SavedModelExistsError if `saved_model_path` holds anything."""
    if _fs.exists(saved_model_path):
        if not _fs.isdir(saved_model_path):
            raise SavedModelExistsError(
                f"saved_model_path={saved_model_path!r} is an existing file. "
                "Pass the path of a new or empty directory."
            )
        if _fs.listdir(saved_model_path):
            raise SavedModelExistsError(
                f"saved_model_path={saved_model_path!r} already exists and is "
                "not empty. Pass a new directory, or remove the old export "
                "first (VersionedExporter picks a fresh version directory for "
                "you)."
            )


def export_saved_model(
    model,
    saved_model_path: str,
    custom_objects: dict | None = None,
    as_text: bool = False,
    input_signature=None,
    serving_only: bool = False,
    *,
    target_signature=None,
    warmup_inputs=None,
    signatures=None,
    validate=True,
) -> None:
    """Exports a Keras model as a SavedModel with train, eval and serve graphs.

    The SavedModel has one MetaGraph per mode: `serve` (signature
    `serving_default`) always, and `train` and `eval` (signatures `train` and
    `eval`) when the model is compiled with an optimizer. Their inputs are the
    model's inputs plus one `<output_name>_target` per output; their outputs
    are `loss`, `predictions/<output_name>` and `metrics/<name>/value`. Each
    call of `train` applies one optimizer step; `eval` never changes weights.
    All graphs share one variables checkpoint, holding the weights, the
    optimizer state and the metric state. `assets/saved_model.json` holds
    `model.to_json()`, so `load_from_saved_model` can rebuild the model.

    The export is written to a temporary sibling of `saved_model_path` and
    renamed into place when complete (on object stores, copied with the
    graph file last): a failure, a full disk say, leaves nothing at the path.

    A model compiled with no loss gets only the serve graph, with a warning.
    A model that overrides `train_step` or `test_step` is refused unless
    `serving_only=True`: the train and eval graphs run Keras' own steps.

    Example:

        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        export_saved_model(model, "/tmp/my_model")
        served = tf.saved_model.load("/tmp/my_model", tags=["serve"])
        served.signatures["serving_default"](tf.zeros([1, 4]))

    Args:
      model: the `keras.Model` (Keras 3) or `tf_keras.Model` (Keras 2) to
        export. Sequential, functional (one or several inputs and outputs, as
        lists or dicts) or subclassed.
      saved_model_path: a new or empty directory (any `tf.io.gfile` path,
        e.g. `gs://...` or `ram://...`).
      custom_objects: accepted for compatibility with the original API; the
        export needs none (the loader takes them). Defaults to None.
      as_text: write `saved_model.pbtxt` instead of `saved_model.pb`.
        Defaults to False.
      input_signature: the model's inputs as `tf.TensorSpec`s (one, or a
        list/dict of them), needed for a model that is not built. Defaults to
        None (read from the built model).
      serving_only: write only the `serve` graph. Defaults to False.
      target_signature: overrides the target specs of the train/eval graphs:
        a `tf.TensorSpec`, or a dict of output name -> `tf.TensorSpec`.
        Defaults to None (the output's shape and dtype; int64 class ids
        behind a sparse categorical loss).
      warmup_inputs: a batch of serve inputs (an array, a list of arrays or
        a dict of input name -> array, as `model.predict` takes, at most
        1,000 rows); each row becomes one request to `serving_default` in
        `assets.extra/tf_serving_warmup_requests`, which TF Serving replays
        when it loads the export. Needs the `serving` extra. Defaults to
        None.
      signatures: the serving signatures of the `serve` graph: a dict of
        signature key -> spec from `kerassave_callbacks.signatures`
        (`predict()`, `examples()`, `classify()`, `regress()`) or a
        `tf.function` with an `input_signature` that calls the model.
        `serving_default` is `predict()` unless the dict names it. Defaults
        to None (`serving_default` alone).
      validate: the publish gate, True, False or a `PublishGate`: before
        the rename, the staged SavedModel is loaded as TF Serving loads it,
        its warm-up replayed and its answers compared with the model's; if
        it fails, nothing is left and `GateFailure` (a ValueError) says
        why. Defaults to True.

    Raises:
      TypeError: `model` is not a Keras model, or a signature holds
        something other than `tf.TensorSpec`s.
      ValueError: the model is not built and no `input_signature` was given,
        or it overrides `train_step`/`test_step` and `serving_only` is off,
        or `warmup_inputs` do not match the serve signature, or a signature
        does not fit the model (an input `tf.Example` cannot hold, a
        `classify` of a model with several outputs and no `output=`).
      ImportError: `warmup_inputs` without the `serving` extra.
      SavedModelExistsError: `saved_model_path` is a file or not empty, or
        something was written there while the export was made (also an
        `AssertionError`, as in the original API); nothing there is removed.
      PermissionError: `saved_model_path` cannot be written.
      GateFailure: the SavedModel failed the publish gate (a ValueError).
    """
    del custom_objects  # The export serializes configs; only loading needs them.
    check_model(model)
    signatures = signatures_lib.normalized(signatures)
    if not str(saved_model_path).strip():
        raise ValueError(
            f"saved_model_path={saved_model_path!r} is empty. Pass the directory "
            "to write the SavedModel to, e.g. '/tmp/my_model'."
        )
    parent = _files.parent(str(saved_model_path))
    saved_model_path = str(saved_model_path).rstrip("/")
    if parent is None:
        raise ValueError(
            f"saved_model_path={saved_model_path!r} is the root of a file "
            "system (or a bucket). Pass a directory inside it, e.g. "
            "'/tmp/my_model' or 'gs://bucket/my_model'."
        )
    check_empty_target(saved_model_path)
    _files.check_can_create(saved_model_path, "saved_model_path")
    graphs = mode_graphs.ModeGraphs(
        model,
        input_signature=input_signature,
        serving_only=serving_only,
        target_signature=target_signature,
        warmup_inputs=warmup_inputs,
        signatures=signatures,
    )
    gate = publish_gate.as_gate(validate)
    expected = _expectation(graphs, gate, warmup_inputs)
    try:
        with _files.Staging(parent, time.time()) as staged:
            graphs.save(staged.path, as_text=as_text)
            if expected is not None:
                staged.start_flush()
                _check_gate(staged.path, saved_model_path, gate, graphs, *expected)
            # Empty when checked, but tracing took a while: only an empty
            # directory is removed, never what someone wrote there meanwhile.
            if _fs.isdir(saved_model_path):
                _files.remove_empty_dir(saved_model_path)
            staged.finalize(saved_model_path)
    except FileExistsError as e:
        raise SavedModelExistsError(
            f"saved_model_path={saved_model_path!r} was written to by someone "
            "else while this export was traced and written; it was left as it "
            "is. Pass a new directory."
        ) from e
    except (tf.errors.PermissionDeniedError, PermissionError) as e:
        raise PermissionError(
            f"saved_model_path={saved_model_path!r} is not writable: {e}. "
            "Pass a directory you can write to."
        ) from e


def _expectation(graphs, gate, warmup_inputs) -> tuple | None:
    """(requests, answers) of the publish gate, or None when it is off."""
    if not gate.enabled:
        return None
    requests = validation.requests(graphs, gate, warmup_inputs)
    return requests, validation.answers(graphs, requests)


def _check_gate(staged: str, path: str, gate, graphs, requests, answers) -> None:
    problems = validation.gate_problems(staged, gate, requests, answers, graphs.model)
    if problems:
        raise validation.GateFailure(path, problems)
