"""`load_from_saved_model`: rebuilds the Keras model of an export."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from typing import Any

import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.protobuf import saved_model_pb2

from kerassave_callbacks import _fs, layout
from kerassave_callbacks.core import keras_api, modes


def _damaged(saved_model_path: str, what: str) -> ValueError:
    return ValueError(
        f"The export at {saved_model_path!r} is damaged: {what}. Nothing was "
        "loaded. Export the model again, or load another version."
    )


def read_saved_model(saved_model_path: str) -> saved_model_pb2.SavedModel:
    """Parses `saved_model.pb` (or `.pbtxt`) of an export.

    Raises:
      FileNotFoundError: the directory holds no SavedModel.
      ValueError: the graph file is empty, cut short or not a SavedModel.
    """
    pb = posixpath.join(saved_model_path, layout.SAVED_MODEL_PB)
    pbtxt = posixpath.join(saved_model_path, layout.SAVED_MODEL_PBTXT)
    saved = saved_model_pb2.SavedModel()
    if _fs.exists(pb):
        name = layout.SAVED_MODEL_PB
        parse = lambda data: saved.ParseFromString(data)  # noqa: E731
        path = pb
    elif _fs.exists(pbtxt):
        name = layout.SAVED_MODEL_PBTXT
        parse = lambda data: text_format.Parse(data.decode("utf-8"), saved)  # noqa: E731
        path = pbtxt
    else:
        raise FileNotFoundError(
            f"No SavedModel at saved_model_path={saved_model_path!r}: it holds "
            f"neither {layout.SAVED_MODEL_PB} nor "
            f"{layout.SAVED_MODEL_PBTXT}. Pass the directory of one export "
            "(for a VersionedExporter's export_dir, one of its version "
            "directories)."
        )
    data = _fs.read_bytes(path)
    try:
        parse(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        raise _damaged(
            saved_model_path, f"{name} ({len(data)} bytes) cannot be parsed: {e}"
        ) from e
    if not saved.meta_graphs:
        raise _damaged(saved_model_path, f"{name} ({len(data)} bytes) holds no graph")
    return saved


def _read_json(saved_model_path: str, path: str):
    try:
        return json.loads(_fs.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(saved_model_path, f"{path} is not valid JSON: {e}") from e


def open_checkpoint(saved_model_path: str):
    """A reader of the export's variables, or ValueError naming the damage."""
    # Not tf.train.load_checkpoint: it takes ram:// prefixes for directories.
    prefix = posixpath.join(saved_model_path, layout.VARIABLES_PREFIX)
    try:
        return tf.compat.v1.train.NewCheckpointReader(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise _damaged(
            saved_model_path,
            f"its variables ({prefix}.index and data) cannot be read: {e}",
        ) from e


def read_all_values(reader, saved_model_path: str) -> dict:
    """Every value of the checkpoint, key -> array.

    All are read, those the loader does not use too, so that a cut-short
    file (which TF Serving's restore would choke on) is refused here.
    """
    try:
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    except Exception as e:  # IndexError, DataLossError...: a cut-short file.
        raise _damaged(
            saved_model_path, f"the values in its variables cannot be read: {e}"
        ) from e


def _group(values: dict, group: str, saved_model_path: str) -> list:
    """The values of one variable group, in index order."""
    count = sum(1 for k in values if k.startswith(group + "/"))
    keys = [layout.variable_key(group, i) for i in range(count)]
    missing = [k for k in keys if k not in values]
    if missing:
        raise _damaged(saved_model_path, f"its variables lack {missing[:3]}")
    return [values[k] for k in keys]


def _copy_layer_assets(saved_model_path: str, tmp: str) -> dict[str, str]:
    """A local copy of the layers' asset folders (Keras opens files):
    layer index -> folder."""
    root = posixpath.join(saved_model_path, "assets", layout.LAYER_ASSETS)
    if not _fs.isdir(root):
        return {}
    folders = {}
    for index in _fs.listdir(root):
        folders[index] = os.path.join(tmp, index)
        os.makedirs(folders[index])
        for name in _fs.listdir(posixpath.join(root, index)):
            _fs.copy(
                posixpath.join(root, index, name), os.path.join(folders[index], name)
            )
    return folders


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


# Packages whose classes a config may name under safe_mode: both Kerases,
# Keras' own libraries, this one, and `builtins` (what Keras names for a
# function, looked up by name; nothing is imported). Any other module is
# named by the file, and importing it would run its code.
_TRUSTED_PACKAGES = frozenset(
    {
        "builtins",
        "keras",
        "tf_keras",
        "keras_hub",
        "keras_cv",
        "keras_nlp",
        "kerassave_callbacks",
    }
)


def _foreign_classes(config, adapter, custom_objects) -> list[str]:
    """`module.class` of every object in a serialized Keras config whose
    module is outside `_TRUSTED_PACKAGES`, unless the caller knows its class
    (`custom_objects`, or registered with Keras)."""
    found = []
    if isinstance(config, dict):
        module = config.get("module")
        name = config.get("registered_name") or config.get("class_name")
        if (
            isinstance(module, str)
            and module.split(".")[0] not in _TRUSTED_PACKAGES
            and not (isinstance(name, str) and adapter.registered(name, custom_objects))
        ):
            found.append(f"{module}.{config.get('class_name')}")
        for value in config.values():
            found += _foreign_classes(value, adapter, custom_objects)
    elif isinstance(config, list):
        for value in config:
            found += _foreign_classes(value, adapter, custom_objects)
    return found


def _check_classes(
    saved_model_path: str, config: dict, adapter, custom_objects, unsafe_ok: bool
) -> None:
    foreign = [] if unsafe_ok else _foreign_classes(config, adapter, custom_objects)
    if foreign:
        raise ValueError(
            f"The export at {saved_model_path!r} names classes outside Keras "
            f"and kerassave_callbacks: {sorted(set(foreign))}. Rebuilding them "
            "would import those modules, running their code, so nothing was "
            "loaded. If you trust this export, pass the classes in "
            "custom_objects (e.g. custom_objects={'MyLayer': MyLayer}) or "
            "register them with keras.saving.register_keras_serializable; or "
            "pass safe_mode=False."
        )


def _has_train_graph(saved: saved_model_pb2.SavedModel) -> bool:
    return any(modes.TRAIN.tag in m.meta_info_def.tags for m in saved.meta_graphs)


def _restore(values: list, group: str, variables, what: str, path: str, name) -> None:
    if len(values) != len(variables):
        raise ValueError(
            f"The export at {path!r} holds {len(values)} {group} but {what} has "
            f"{len(variables)}, so they cannot be restored. This happens when "
            "the model is rebuilt differently from how it was exported (custom "
            "layers or optimizers need their custom_objects). Load it with "
            "compile=False to skip the optimizer state, or read its graphs "
            "with tf.saved_model.load."
        )
    for i, (variable, value) in enumerate(zip(variables, values, strict=True)):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"The export at {path!r} holds {group}[{i}] of shape "
                f"{tuple(value.shape)} but {what} has {name(variable)} of shape "
                f"{tuple(variable.shape)}: the model was rebuilt differently "
                "from how it was exported."
            )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _model_config(saved_model_path: str, keys) -> dict:
    """The export's Keras JSON config.

    Raises:
      ValueError: there is none (naming why, and what to load instead), or
        it is not valid JSON.
    """
    json_path = posixpath.join(saved_model_path, layout.MODEL_JSON)
    if not _fs.exists(json_path):
        if any(k.startswith(layout.MODEL_VARIABLES + "/") for k in keys):
            why = "the model had no get_config(), so its Keras model cannot be rebuilt"
        else:
            why = (
                "it is not an export of kerassave_callbacks (a SavedModel "
                "written by tf.saved_model.save or Keras' model.export(), say)"
            )
        raise ValueError(
            f"The export at {saved_model_path!r} has no {layout.MODEL_JSON}: "
            f"{why}. Load its graphs with tf.saved_model.load(path) (add "
            "tags=['serve'] for an export of this library)."
        )
    return _read_json(saved_model_path, json_path)


def _check_lambdas(saved_model_path: str, config: dict, unsafe_ok: bool) -> None:
    lambdas = _lambda_layers(config)
    if lambdas and not unsafe_ok:
        raise ValueError(
            f"The export at {saved_model_path!r} holds Lambda layers {lambdas}, "
            "whose Python code would run on load. If you trust this export, "
            "pass safe_mode=False (or call "
            "keras.config.enable_unsafe_deserialization())."
        )


def load_from_saved_model(
    saved_model_path: str,
    custom_objects: dict | None = None,
    *,
    compile: bool = True,
    safe_mode: bool = True,
    keras: str | None = None,
) -> Any:
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
        on load, and any class from a module outside Keras and this library
        that the caller did not pass in `custom_objects` or register with
        Keras (rebuilding it would import that module: an export is
        untrusted input). Both Kerases. Pass False only for exports you
        trust. As in `keras.saving.load_model`,
        `keras.config.enable_unsafe_deserialization()` turns it off too.
        Defaults to True.
      keras: the Keras to rebuild with, "keras" (Keras 3) or "tf_keras";
        an export the other one wrote is refused. Defaults to None: the
        Keras that wrote it (which must be installed).

    Returns:
      The rebuilt `keras.Model`, or a `tf_keras.Model` for an export that
      `tf_keras` wrote (which needs the `tf_keras` extra).

    Raises:
      FileNotFoundError: `saved_model_path` holds no SavedModel.
      ImportError: the export was written by `tf_keras`, not installed.
      ValueError: the export is damaged (an empty, cut-short or garbage
        graph file, unreadable variables or JSON), is not an export of this
        library or has no `assets/saved_model.json` (use
        `tf.saved_model.load`), holds a Lambda layer or a foreign class and
        `safe_mode` is on, was written by another Keras than `keras`, or its
        weights do not fit the rebuilt model. Every file is read and
        checked before the model is built: no half-restored model is ever
        returned.
    """
    saved = read_saved_model(saved_model_path)
    reader = open_checkpoint(saved_model_path)
    config = _model_config(saved_model_path, reader.get_variable_to_shape_map())
    adapter = keras_api.adapter_for_config(config, saved_model_path, keras)
    unsafe_ok = not safe_mode or adapter.unsafe_deserialization_enabled()
    _check_lambdas(saved_model_path, config, unsafe_ok)
    _check_classes(saved_model_path, config, adapter, custom_objects, unsafe_ok)
    restore_optimizer = compile and _has_train_graph(saved)
    if not compile:
        config.pop("compile_config", None)
    # Every value is read before the model is built: a damaged file fails
    # here, never half way through restoring.
    values = read_all_values(reader, saved_model_path)
    # The JSON carries the build and compile configs: this builds and
    # compiles the model as it was.
    model = adapter.from_config(config, custom_objects, unsafe_ok)
    _restore(
        _group(values, layout.MODEL_VARIABLES, saved_model_path),
        layout.MODEL_VARIABLES,
        adapter.model_variables(model),
        "the rebuilt model",
        saved_model_path,
        adapter.variable_name,
    )
    with tempfile.TemporaryDirectory() as tmp:
        adapter.restore_layer_state(model, _copy_layer_assets(saved_model_path, tmp))
    if restore_optimizer and adapter.is_compiled(model):
        adapter.build_optimizer(model)  # Its slots, to restore into.
        optimizer = model.optimizer
        _restore(
            _group(values, layout.OPTIMIZER_VARIABLES, saved_model_path),
            layout.OPTIMIZER_VARIABLES,
            adapter.optimizer_variables(model),
            f"the rebuilt {type(optimizer).__name__}",
            saved_model_path,
            adapter.variable_name,
        )
    return model
