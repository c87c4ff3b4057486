"""A single-device copy of a distributed model, on which its train and eval
graphs are traced.

Traced on a model's mirrored variables, a step is not the step `fit` takes:
Keras 3's applies each update once per replica (two replicas: steps twice
`train_on_batch`'s), and Keras 2 updates its metrics (`SyncOnReadVariable`s
under a strategy) only in a replica context, which a traced step is not.
So `ModeGraphs` traces such a model's graphs on a copy rebuilt from its
config in a thread of its own (strategy scopes are thread-local, so none is
in scope there), with its weights and layer state; every export then saves
the values of the model itself, read in the copy's order (`model_sources`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile

from absl import logging

from kerassave_callbacks import _files, layout
from kerassave_callbacks.core import _tf_logs


def copy_of(adapter, model, model_json: str | None, layer_assets: dict):
    """A copy of `model` outside its distribution strategy, or None (with a
    warning naming why) when it cannot be rebuilt from its config."""
    try:
        if model_json is None:
            raise ValueError("the model has no config")
        values = [v.numpy() for v in adapter.model_variables(model)]
        config = json.loads(model_json)
        return in_a_fresh_thread(
            lambda: _rebuild(adapter, model, config, values, layer_assets)
        )
    except Exception as e:  # Any failure to rebuild: export serve only.
        logging.warning(
            "Model %r gets only the serve graph: its train and eval graphs "
            "are traced on a single-device copy of it (it trains under %s), "
            "and that copy could not be rebuilt from its config: %s",
            model.name,
            type(getattr(model, "distribute_strategy", None)).__name__,
            e,
        )
        return None


def model_sources(adapter, model, root, training: bool) -> list:
    """The model's own variables in the order of the copy's variables on
    `root` (None for metrics, which are saved as zeros).

    Raises:
      ValueError: the copy's state does not match the model's.
    """
    own = {
        layout.MODEL_VARIABLES: adapter.model_variables(model),
        layout.OPTIMIZER_VARIABLES: (
            adapter.optimizer_variables(model) if training else []
        ),
    }
    sources = []
    for group in layout.VARIABLE_GROUPS:
        copies = getattr(root, group, [])
        if group == layout.METRIC_VARIABLES:
            sources.extend([None] * len(copies))
            continue
        shapes = [tuple(v.shape) for v in own[group]]
        if shapes != [tuple(v.shape) for v in copies]:
            raise ValueError(
                f"Cannot export model {model.name!r}: its {group} "
                f"({len(shapes)}) do not match those of its single-device "
                f"copy ({len(copies)}). Pass serving_only=True."
            )
        sources.extend(own[group])
    return sources


def in_a_fresh_thread(fn):
    """`fn()` run in a new thread (no distribution strategy in scope there),
    its TF INFO lines kept quiet as in this one."""

    def quietly():
        with _tf_logs.quiet():
            return fn()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(quietly).result()


def _rebuild(adapter, model, config: dict, values: list, layer_assets: dict):
    """`model` rebuilt from its `config` (compiled, its optimizer not built)
    with its weights `values` and its layers' state, as the loader would
    rebuild it from an export. Its own classes serve as custom objects.

    Raises:
      ValueError: the rebuilt model's weights do not fit `values`.
    """
    custom = {type(o).__name__: type(o) for o in [model, *adapter.all_layers(model)]}
    copy = adapter.from_config(config, custom, True)
    weights = adapter.model_variables(copy)
    if [tuple(w.shape) for w in weights] != [v.shape for v in values]:
        raise ValueError("its weights do not fit the rebuilt model")
    for weight, value in zip(weights, values, strict=True):
        weight.assign(value)
    with tempfile.TemporaryDirectory() as tmp:
        _files.write_tree(tmp, layer_assets)
        folders = {index: os.path.join(tmp, index) for index in os.listdir(tmp)}
        adapter.restore_layer_state(copy, folders)
    return copy
