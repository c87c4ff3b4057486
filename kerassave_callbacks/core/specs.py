"""Names, shapes and dtypes of the inputs, outputs and targets of an export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from kerassave_callbacks.core import keras_api, modes, names


def input_structure(model, input_signature=None):
    """The structure `model(...)` is called with, as named `tf.TensorSpec`s.

    Args:
      model: the Keras model.
      input_signature: None to read it from the built model, or a
        `tf.TensorSpec`, a list/tuple/dict of them, or a one-element list
        around such a structure (the `tf.function` convention).

    Returns:
      A structure of `tf.TensorSpec` whose leaves are named by their
      signature keys (`names.signature_key`): of the keys of a dict input,
      else of the Keras input names.

    Raises:
      ValueError: no `input_signature` and the model was never built, or
        two inputs would have one signature key.
      TypeError: `input_signature` holds something other than `TensorSpec`s.
    """
    return _named(_structure(model, input_signature))


def input_names(model, input_signature=None) -> dict[str, str]:
    """Keras input name -> signature key, in input order."""
    structure = _structure(model, input_signature)
    raw = _raw_names(structure)
    return dict(zip(raw, names.signature_keys(raw, "input"), strict=True))


def _structure(model, input_signature):
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
    return structure


def _raw_names(structure) -> list[str]:
    """The Keras names of the leaves: dict keys win over spec names."""
    if isinstance(structure, Mapping):
        return [str(k) for k in sorted(structure)]
    leaves = tf.nest.flatten(structure)
    single = len(leaves) == 1
    return [
        s.name.split(":")[0] if s.name else ("inputs" if single else f"inputs_{i}")
        for i, s in enumerate(leaves)
    ]


def _named(structure):
    """Names every leaf spec by its signature key."""
    keys = names.signature_keys(_raw_names(structure), "input")
    if isinstance(structure, Mapping):
        leaves = [structure[k] for k in sorted(structure)]
    else:
        leaves = tf.nest.flatten(structure)
    named = [
        tf.TensorSpec(s.shape, s.dtype, name=n)
        for s, n in zip(leaves, keys, strict=True)
    ]
    if isinstance(structure, Mapping):
        return dict(zip(sorted(structure), named, strict=True))
    return tf.nest.pack_sequence_as(structure, named)


def output_names(model, outputs) -> list[str]:
    """Keras names of the model's outputs, in `tf.nest.flatten(outputs)`
    order (their signature keys: `names.signature_keys`)."""
    flat = tf.nest.flatten(outputs)
    if isinstance(outputs, Mapping):
        return [str(k) for k in sorted(outputs)]
    keras_names = list(getattr(model, "output_names", None) or [])
    sequential = keras_api.adapter_for(model).is_sequential(model)
    if not keras_names and sequential and model.layers:
        keras_names = [model.layers[-1].name]  # Sequential has no output_names.
    if len(keras_names) == len(flat):
        return [str(n) for n in keras_names]
    return [f"output_{i}" for i in range(len(flat))]


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
