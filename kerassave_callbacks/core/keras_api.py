"""Picks the Keras adapter (`keras3` or `keras2`) of a model or an export.

`tf_keras` is optional: it is imported only for a `tf_keras` model, which
means the user imported it already, or to load an export it wrote.
"""

from __future__ import annotations

import sys

import tensorflow as tf

from kerassave_callbacks._version import __version__
from kerassave_callbacks.core import _keras_common, keras3
from kerassave_callbacks.core.adapter import KerasAdapter

# Matches the TensorFlow it runs with (Keras 2 ships in step with it).
_INSTALL = (
    "pip install 'tf_keras==<your TensorFlow's major.minor>.*' (or, in a "
    "checkout of kerassave_callbacks, pip install -e '.[tf_keras]')"
)


def adapter_for(model) -> KerasAdapter:
    """The adapter module of `model`'s Keras.

    Raises:
      TypeError: `model` is neither a `keras.Model` nor a `tf_keras.Model`.
    """
    if keras3.is_model(model):
        return keras3
    if "tf_keras" in sys.modules:
        from kerassave_callbacks.core import keras2

        if keras2.is_model(model):
            return keras2
    raise TypeError(
        f"`model` must be a keras.Model (Keras 3) or a tf_keras.Model (Keras "
        f"2). Received: model={model!r} of type {type(model).__name__}."
    )


KERASES = ("keras", "tf_keras")


def adapter_for_config(
    config: dict, saved_model_path: str, keras: str | None = None
) -> KerasAdapter:
    """The adapter of the Keras that wrote an export's JSON config.

    Args:
      config: the export's JSON config.
      saved_model_path: the export, for messages.
      keras: the Keras the caller asks for ("keras" or "tf_keras"); an
        export another one wrote is refused. None takes the one that wrote
        it.

    Raises:
      ImportError: the export was written by `tf_keras`, not installed.
      ValueError: `keras` is none of `KERASES`, or not the Keras that wrote
        the export; or that one is a Keras no adapter reads.
    """
    if keras not in (None, *KERASES):
        raise ValueError(
            f"keras={keras!r} is no Keras this library reads. Pass one of "
            f"{KERASES}, or None for the one that wrote the export."
        )
    version = config.get(_keras_common.VERSION_KEY)
    writer = "keras" if keras3.wrote(config) else "tf_keras"
    if keras is not None and keras != writer:
        raise ValueError(
            f"keras={keras!r}, but the export at {saved_model_path!r} was "
            f"written by {writer} (Keras {version or '3'}): nothing was loaded. "
            f"Load it with keras={writer!r}, or its graphs with "
            "tf.saved_model.load(path, tags=['serve'])."
        )
    if writer == "keras":
        return keras3
    try:
        from kerassave_callbacks.core import keras2
    except ImportError as e:
        raise ImportError(
            f"The export at {saved_model_path!r} holds a tf_keras (Keras "
            f"{version}) model, and tf_keras is not installed. Install it "
            f"with: {_INSTALL}"
        ) from e
    if not keras2.wrote(config):
        raise ValueError(
            f"The export at {saved_model_path!r} was written by Keras "
            f"{version!r}, which this version of kerassave_callbacks cannot "
            "rebuild (it reads Keras 3 and Keras 2 exports). Load its graphs "
            "with tf.saved_model.load(path, tags=['serve'])."
        )
    return keras2


def check_supported(model):
    """The distribution strategy `model` trains under, once it is known to
    be one `fit` supports.

    Raises:
      ValueError: a Keras 3 model under MultiWorkerMirroredStrategy, where
        its `fit` does not run (keras-team/keras#20585) and saving would
        hang.
    """
    strategy = _keras_common.strategy_of(model)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker and adapter_for(model) is keras3:
        raise ValueError(
            f"Model {model.name!r} is a Keras 3 model under "
            "MultiWorkerMirroredStrategy, which Keras 3's fit does not support "
            "(keras-team/keras#20585). Train multi-worker with tf_keras "
            f"({_INSTALL}, then build the model with tf_keras, or set "
            "TF_USE_LEGACY_KERAS=1 and use tf.keras); SavedModelExporter works "
            "with both."
        )
    return strategy


def library_versions(model) -> dict[str, str]:
    """What writes an export of `model`: this package, TF and the model's
    Keras, by version (`export_info.json`'s `library`)."""
    return {
        "kerassave_callbacks": __version__,
        "tensorflow": tf.__version__,
        "keras": adapter_for(model).version(),
    }
