"""Builds the serving signatures of the `serve` MetaGraph from their specs
(`kerassave_callbacks.signatures`).

Each signature is a `tf.function` traced once. Those that take serialized
`tf.Example`s parse them with a feature spec derived from the model's
inputs and call the traced predict function, so the model itself is traced
once whatever the number of signatures.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.signatures import SignatureSpec


def feature_spec(inputs, spec: SignatureSpec) -> dict[str, tf.io.FixedLenFeature]:
    """Input name -> `tf.io.FixedLenFeature`, for parsing `tf.Example`s into
    the model's inputs (`inputs`: named `tf.TensorSpec`s, as
    `specs.input_structure` returns).

    Raises:
      ValueError: an input whose feature cannot be derived (an unknown inner
        dimension, a dtype `tf.Example` cannot hold), or a `feature_spec`
        naming inputs the model does not have.
    """
    given = dict(spec.feature_spec or {})
    leaves = tf.nest.flatten(inputs)
    unknown = sorted(set(given) - {s.name for s in leaves})
    if unknown:
        raise ValueError(
            f"`feature_spec` names inputs {unknown} that the model does not "
            f"have. Its inputs are {[s.name for s in leaves]}."
        )
    features = {}
    for leaf in leaves:
        feature = given.get(leaf.name)
        if feature is None:
            feature = _derived_feature(leaf, spec.kind)
        elif not isinstance(feature, tf.io.FixedLenFeature):
            raise TypeError(
                f"feature_spec[{leaf.name!r}] must be a tf.io.FixedLenFeature "
                f"(the parsed value is fed to the model). Received: {feature!r}."
            )
        features[leaf.name] = feature
    return features


def _derived_feature(leaf: tf.TensorSpec, kind: str) -> tf.io.FixedLenFeature:
    inner = leaf.shape[1:] if leaf.shape.rank else None
    fix = (
        f"Pass {kind}(feature_spec={{{leaf.name!r}: tf.io.FixedLenFeature("
        "shape, dtype)}), or a tf.function endpoint of your own."
    )
    if inner is None or not inner.is_fully_defined():
        raise ValueError(
            f"Cannot read the model's input {leaf.name!r} of shape {leaf.shape} "
            f"from tf.Example for the {kind!r} signature: a tf.Example feature "
            f"needs a fixed shape after the batch axis. {fix}"
        )
    dtype = example_dtype(leaf.dtype)
    if dtype is None:
        raise ValueError(
            f"Cannot read the model's input {leaf.name!r} of dtype "
            f"{leaf.dtype.name} from tf.Example, which holds floats, int64s and "
            f"bytes. {fix}"
        )
    return tf.io.FixedLenFeature(inner, dtype)


def example_dtype(dtype: tf.DType) -> tf.DType | None:
    """The dtype of the `tf.Example` list that holds values of `dtype`
    (float32, int64 or string), or None when none does."""
    if dtype.is_floating:
        return tf.float32
    if dtype.is_integer or dtype.is_bool:
        return tf.int64
    return tf.string if dtype == tf.string else None


def build(specs: Mapping, *, inputs, predict, output_specs: dict, model) -> dict:
    """Signature key -> traced `tf.function`, one per spec.

    Args:
      specs: signature key -> `SignatureSpec` or custom `tf.function`.
      inputs: the model's named input specs.
      predict: the traced predict `tf.function` (flat inputs -> dict of
        named outputs).
      output_specs: output name -> `tf.TensorSpec` of what `predict` returns.
      model: the model (for error messages).

    Raises:
      ValueError: a spec that does not fit the model (see `feature_spec`,
        and each kind's `answer`).
    """
    built = {}
    for key, spec in specs.items():
        if signatures_lib.is_endpoint(spec):
            spec.get_concrete_function()
            built[key] = spec
        else:
            built[key] = _built(spec, inputs, predict, output_specs, model)
    return built


def _built(spec: SignatureSpec, inputs, predict, output_specs, model):
    """The traced function of a spec of a registered kind: its input (the
    model's own, or serialized examples) -> the model -> its answer."""
    answer = _answer(spec, output_specs, model)
    flat = tf.nest.flatten(inputs)
    if spec.input_key is None:
        if answer is None:
            return predict  # The model's own inputs and outputs.
        call, signature = (lambda *args: answer(predict(*args))), flat
    else:
        features = feature_spec(inputs, spec)

        # `*args`: the function takes its input's name from the spec.
        def call(*args):
            parsed = tf.io.parse_example(args[0], features)
            outputs = predict(*[tf.cast(parsed[s.name], s.dtype) for s in flat])
            return outputs if answer is None else answer(outputs)

        # One batch of serialized examples under the kind's input key.
        signature = [tf.TensorSpec([None], tf.string, name=spec.input_key)]
    fn = tf.function(call, input_signature=signature, autograph=False)
    fn.get_concrete_function()
    return fn


def _answer(spec: SignatureSpec, output_specs: dict, model):
    """The kind's answer function for this spec and model (None: the
    model's outputs as they are); its checks run here, while tracing."""
    kind = signatures_lib.KINDS[spec.kind]
    return None if kind.answer is None else kind.answer(spec, output_specs, model)


def answer_of(spec, outputs: dict, output_specs: dict, model) -> dict | None:
    """What the signature of `spec` answers when the model's outputs are
    `outputs` (output name -> tensor), run by the same code as its traced
    function; None for a custom endpoint, whose answer is its own."""
    if signatures_lib.is_endpoint(spec):
        return None
    answer = _answer(spec, output_specs, model)
    return dict(outputs) if answer is None else answer(outputs)


def shared_input_keys(specs: Mapping | None) -> list[str]:
    """The keys of the signatures that must read one `inputs` tensor
    (`classify` and `regress`, for MultiInference)."""
    shared = (signatures_lib.CLASSIFY_METHOD, signatures_lib.REGRESS_METHOD)
    return [
        key
        for key, spec in (specs or {}).items()
        if isinstance(spec, SignatureSpec) and spec.method_name in shared
    ]


def method_names(specs: Mapping | None) -> dict[str, str]:
    """Signature key -> method name, for the `serve` MetaGraph."""
    if not specs:
        return {signatures_lib.DEFAULT_KEY: signatures_lib.PREDICT_METHOD}
    return {
        key: getattr(spec, "method_name", signatures_lib.PREDICT_METHOD)
        for key, spec in specs.items()
    }


def to_example(row: Mapping, features: Mapping) -> bytes:
    """One serialized `tf.Example` of `row` (input name -> values of one
    example), each value stored in the list its feature's dtype reads."""
    feature = {}
    for name, spec in features.items():
        values = np.asarray(row[name]).reshape(-1)
        if spec.dtype == tf.string:
            data = [v if isinstance(v, bytes) else str(v).encode() for v in values]
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
        elif spec.dtype == tf.int64:
            feature[name] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=values.astype(np.int64))
            )
        else:
            feature[name] = tf.train.Feature(
                float_list=tf.train.FloatList(value=values.astype(np.float32))
            )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()
