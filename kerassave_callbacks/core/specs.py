"""Names, shapes and dtypes of the inputs, outputs and targets of an export."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import tensorflow as tf

from kerassave_callbacks.core import keras_api, modes

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def _clean(name: str) -> str:
    """A tensor name usable as a signature key (`name:0` -> `name`)."""
    return _BAD_NAME_CHARS.sub("_", name.split(":")[0])


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def input_structure(model, input_signature=None):
    """The structure `model(...)` is called with, as named `tf.TensorSpec`s.

    Args:
      model: the Keras model.
      input_signature: None to read it from the built model, or a
        `tf.TensorSpec`, a list/tuple/dict of them, or a one-element list
        around such a structure (the `tf.function` convention).

    Returns:
      A structure of `tf.TensorSpec` whose leaves carry unique names: the
      keys of a dict input, else the Keras input names.

    Raises:
      ValueError: no `input_signature` and the model was never built.
      TypeError: `input_signature` holds something other than `TensorSpec`s.
    """
    if input_signature is None:
        if not model.built:
            raise ValueError(
                f"Cannot export model {model.name!r}: it is not built and no "
                "`input_signature` was given. Build it first (call it on data, "
                "fit it, or give it a `keras.Input`), or pass e.g. "
                "`input_signature=[tf.TensorSpec([None, 4], tf.float32)]`."
            )
        structure = keras_api.adapter_for(model).inferred_input_signature(model)
    else:
        structure = input_signature
    if isinstance(structure, (list, tuple)) and len(structure) == 1:
        structure = structure[0]
    for leaf in tf.nest.flatten(structure):
        if not isinstance(leaf, tf.TensorSpec):
            raise TypeError(
                "`input_signature` must hold `tf.TensorSpec`s. Received: "
                f"input_signature={input_signature!r}. Expected e.g. "
                "`[tf.TensorSpec([None, 4], tf.float32, name='features')]`."
            )
    return _named(structure)


def _named(structure):
    """Gives every leaf spec a unique name (dict keys win over spec names)."""
    if isinstance(structure, Mapping):
        keys = sorted(structure)
        leaves = [structure[k] for k in keys]
        names = [_clean(str(k)) for k in keys]
    else:
        leaves = tf.nest.flatten(structure)
        single = len(leaves) == 1
        names = [
            _clean(s.name) if s.name else ("inputs" if single else f"inputs_{i}")
            for i, s in enumerate(leaves)
        ]
        keys = None
    names = _unique(names)
    named = [
        tf.TensorSpec(s.shape, s.dtype, name=n)
        for s, n in zip(leaves, names, strict=True)
    ]
    if keys is not None:
        return dict(zip(keys, named, strict=True))
    return tf.nest.pack_sequence_as(structure, named)


def output_names(model, outputs) -> list[str]:
    """Names of the model's outputs, in `tf.nest.flatten(outputs)` order."""
    flat = tf.nest.flatten(outputs)
    if isinstance(outputs, Mapping):
        names = [_clean(str(k)) for k in sorted(outputs)]
    else:
        keras_names = list(getattr(model, "output_names", None) or [])
        sequential = keras_api.adapter_for(model).is_sequential(model)
        if not keras_names and sequential and model.layers:
            keras_names = [model.layers[-1].name]  # Sequential has no output_names.
        if len(keras_names) == len(flat):
            names = [_clean(n) for n in keras_names]
        else:
            names = [f"output_{i}" for i in range(len(flat))]
    return _unique(names)


def _loss_for(loss, name: str, index: int):
    """The loss the compiled model applies to output `name` (or None)."""
    if isinstance(loss, Mapping):
        return loss.get(name)
    if isinstance(loss, Sequence) and not isinstance(loss, str):
        return loss[index] if index < len(loss) else None
    return loss


def _is_sparse(loss) -> bool:
    """True for the sparse categorical losses, which take integer class ids."""
    if loss is None:
        return False
    if isinstance(loss, str):
        label = loss
    else:
        fn = getattr(loss, "fn", None)  # keras.losses.LossFunctionWrapper
        label = " ".join(
            str(x)
            for x in (
                type(loss).__name__,
                getattr(loss, "__name__", ""),
                getattr(fn, "__name__", ""),
            )
        )
    return "sparse" in label.lower()


def target_specs(
    model,
    names: list[str],
    outputs: list[tf.TensorSpec],
    override,
    loss_keys: list[str] | None = None,
    input_names: Sequence[str] = (),
) -> list[tf.TensorSpec]:
    """One target spec per output, named `<output_name>_target`.

    By default a target has the output's shape and dtype, except behind a
    sparse categorical loss, where it holds int64 class ids of the output's
    shape without its last axis. `override` (a TensorSpec for a single-output
    model, or a dict of output name -> TensorSpec) replaces the default.
    `loss_keys` are the model's own output keys (a dict output's keys before
    they were made into signature names), which a dict loss is keyed by.

    Raises:
      ValueError: a target name is taken by one of `input_names` (a client
        feeding it would feed the model's input instead).
    """
    _check_no_input_named_like_a_target(model, names, input_names)
    if override is not None and not isinstance(override, Mapping):
        if len(names) != 1:
            raise ValueError(
                f"`target_signature` must be a dict keyed by output name for a "
                f"model with outputs {names}. Received: {override!r}."
            )
        override = {names[0]: override}
    override = dict(override or {})
    unknown = sorted(set(override) - set(names))
    if unknown:
        raise ValueError(
            f"`target_signature` names outputs {unknown} that the model does "
            f"not have. Expected keys among {names}."
        )
    specs = []
    for i, (name, out) in enumerate(zip(names, outputs, strict=True)):
        spec = override.get(name)
        if spec is None:
            key = loss_keys[i] if loss_keys else name
            if _is_sparse(_loss_for(model.loss, key, i)):
                spec = tf.TensorSpec(out.shape[:-1], tf.int64)
            else:
                spec = tf.TensorSpec(out.shape, out.dtype)
        elif not isinstance(spec, tf.TensorSpec):
            raise TypeError(
                f"`target_signature[{name!r}]` must be a tf.TensorSpec. "
                f"Received: {spec!r}."
            )
        specs.append(
            tf.TensorSpec(spec.shape, spec.dtype, name=name + modes.TARGET_SUFFIX)
        )
    return specs


def _check_no_input_named_like_a_target(model, names, input_names) -> None:
    taken = {n + modes.TARGET_SUFFIX: n for n in names}
    clashes = sorted(set(input_names) & set(taken))
    if clashes:
        name = clashes[0]
        raise ValueError(
            f"Cannot export the train and eval graphs of model {model.name!r}: "
            f"its input {name!r} has the name of the target of its output "
            f"{taken[name]!r} (targets are named <output>{modes.TARGET_SUFFIX}). "
            "Rename the input (e.g. keras.Input(..., name='features')) or the "
            "output, or pass serving_only=True."
        )
