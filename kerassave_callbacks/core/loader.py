"""`load_from_saved_model`: rebuilds the Keras model of an export."""

from __future__ import annotations

import json
import posixpath

import keras
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from kerassave_callbacks.core import mode_graphs, modes


def read_saved_model(saved_model_path: str) -> saved_model_pb2.SavedModel:
    """Parses `saved_model.pb` (or `.pbtxt`) of an export.

    Raises:
      FileNotFoundError: the directory holds no SavedModel.
    """
    pb = posixpath.join(saved_model_path, mode_graphs.SAVED_MODEL_PB)
    pbtxt = posixpath.join(saved_model_path, mode_graphs.SAVED_MODEL_PBTXT)
    saved = saved_model_pb2.SavedModel()
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f:
            saved.ParseFromString(f.read())
    elif tf.io.gfile.exists(pbtxt):
        with tf.io.gfile.GFile(pbtxt, "r") as f:
            text_format.Parse(f.read(), saved)
    else:
        raise FileNotFoundError(
            f"No SavedModel at saved_model_path={saved_model_path!r}: it holds "
            f"neither {mode_graphs.SAVED_MODEL_PB} nor "
            f"{mode_graphs.SAVED_MODEL_PBTXT}. Pass the directory of one export "
            "(for a VersionedExporter's export_dir, one of its version "
            "directories)."
        )
    return saved


def _read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def _lambda_layers(config) -> list[str]:
    """Names of the Lambda layers anywhere in a serialized Keras config."""
    found = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            found.append(config.get("config", {}).get("name", "?"))
        for value in config.values():
            found.extend(_lambda_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_lambda_layers(value))
    return found


def _has_train_graph(saved: saved_model_pb2.SavedModel) -> bool:
    return any(modes.TRAIN.tag in m.meta_info_def.tags for m in saved.meta_graphs)


def _restore(reader, group: str, variables, saved_model_path: str) -> None:
    keys = reader.get_variable_to_shape_map()
    count = sum(1 for k in keys if k.startswith(group + "/"))
    if count != len(variables):
        raise ValueError(
            f"The export at {saved_model_path!r} holds {count} {group} but the "
            f"rebuilt model has {len(variables)}: the model config and its "
            "weights do not match. Pass the custom_objects the model was "
            "built with, or load it with tf.saved_model.load."
        )
    for i, variable in enumerate(variables):
        variable.assign(reader.get_tensor(mode_graphs.variable_key(group, i)))


def load_from_saved_model(
    saved_model_path: str,
    custom_objects: dict | None = None,
    *,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """Rebuilds the Keras model of an `export_saved_model` export.

    The architecture comes from `assets/saved_model.json`, the weights from
    the export's variables. When the export has a train graph and
    `compile` is true, the model is compiled as it was and its optimizer state
    (slots and iteration count) restored, so training resumes where it
    stopped.

    Example:

        export_saved_model(model, "/tmp/my_model")
        restored = load_from_saved_model("/tmp/my_model")
        restored.fit(x, y, epochs=1)  # continues with the saved Adam state

    Args:
      saved_model_path: the directory of one export.
      custom_objects: dict of name -> class or function for custom layers,
        losses or metrics. Defaults to None.
      compile: recompile and restore the optimizer state when the export
        has them. Defaults to True.
      safe_mode: refuse to rebuild Lambda layers, whose Python code would run
        on load; pass False only for exports you trust. Defaults to True.

    Returns:
      The rebuilt `keras.Model`.

    Raises:
      FileNotFoundError: `saved_model_path` holds no SavedModel.
      ValueError: the export has no `assets/saved_model.json` (use
        `tf.saved_model.load`), holds a Lambda layer and `safe_mode` is on,
        or its weights do not fit the rebuilt model.
    """
    saved = read_saved_model(saved_model_path)
    assets = posixpath.join(saved_model_path, "assets")
    json_path = posixpath.join(assets, modes.MODEL_JSON)
    if not tf.io.gfile.exists(json_path):
        raise ValueError(
            f"The export at {saved_model_path!r} has no assets/{modes.MODEL_JSON}"
            " (the model had no get_config()), so its Keras model cannot be "
            "rebuilt. Load its graphs with tf.saved_model.load(path, "
            "tags=['serve'])."
        )
    config = _read_json(json_path)
    lambdas = _lambda_layers(config)
    if lambdas and safe_mode:
        raise ValueError(
            f"The export at {saved_model_path!r} holds Lambda layers {lambdas}, "
            "whose Python code would run on load. If you trust this export, "
            "pass safe_mode=False."
        )
    if not compile:
        config.pop("compile_config", None)
    # Keras 3 JSON carries build_config and compile_config: this builds and
    # compiles the model as it was.
    model = keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=safe_mode
    )
    # Not tf.train.load_checkpoint: it takes ram:// prefixes for directories.
    reader = tf.compat.v1.train.NewCheckpointReader(
        posixpath.join(saved_model_path, "variables", "variables")
    )
    _restore(reader, mode_graphs.MODEL_VARIABLES, model.variables, saved_model_path)
    if compile and _has_train_graph(saved) and mode_graphs.has_training_graphs(model):
        model.optimizer.build(model.trainable_variables)
        _restore(
            reader,
            mode_graphs.OPTIMIZER_VARIABLES,
            model.optimizer.variables,
            saved_model_path,
        )
    return model
