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
        and the output rules of `classify`/`regress`).
    """
    built = {}
    for key, spec in specs.items():
        if signatures_lib.is_endpoint(spec):
            spec.get_concrete_function()
            built[key] = spec
        elif spec.kind == "predict":
            built[key] = predict
        else:
            built[key] = _from_examples(spec, inputs, predict, output_specs, model)
    return built


def _from_examples(spec, inputs, predict, output_specs, model):
    features = feature_spec(inputs, spec)
    flat = tf.nest.flatten(inputs)

    def model_outputs(serialized):
        parsed = tf.io.parse_example(serialized, features)
        return predict(*[tf.cast(parsed[s.name], s.dtype) for s in flat])

    if spec.kind == "examples":
        answer = model_outputs
    else:
        name = _output_name(spec, output_specs, model)
        answer = _ANSWERS[spec.kind](spec, name, output_specs[name], model_outputs)
    # One batch of serialized examples, the input key named by the spec (a
    # `*args` function takes its signature's input names from the specs).
    fn = tf.function(
        lambda *args: answer(args[0]),
        input_signature=[tf.TensorSpec([None], tf.string, name=spec.input_key)],
        autograph=False,
    )
    fn.get_concrete_function()
    return fn


def answer_of(spec, outputs: dict, output_specs: dict, model) -> dict | None:
    """What the signature of `spec` answers when the model's outputs are
    `outputs` (output name -> tensor), run by the same code as its traced
    function; None for a custom endpoint, whose answer is its own."""
    if signatures_lib.is_endpoint(spec):
        return None
    if spec.kind in ("predict", "examples"):
        return dict(outputs)
    name = _output_name(spec, output_specs, model)
    answer = _ANSWERS[spec.kind](spec, name, output_specs[name], lambda _: outputs)
    return answer(None)


def _output_name(spec, output_specs: dict, model) -> str:
    names = list(output_specs)
    if spec.output is None:
        if len(names) == 1:
            return names[0]
        raise ValueError(
            f"Model {model.name!r} has outputs {names}: name the one to "
            f"{spec.kind} with, e.g. {spec.kind}(output={names[0]!r})."
        )
    if spec.output not in output_specs:
        raise ValueError(
            f"{spec.kind}(output={spec.output!r}): model {model.name!r} has "
            f"no such output. Its outputs are {names}."
        )
    return spec.output


def _classify(spec, name, out: tf.TensorSpec, model_outputs):
    if not out.dtype.is_floating or out.shape.rank not in (1, 2):
        raise ValueError(
            f"classify(output={name!r}) needs scores of shape [batch, classes] "
            f"(float); the output is {out.dtype.name} {out.shape}. Name another "
            "output, or serve this one with predict() or an endpoint of your own."
        )
    k = 1 if out.shape.rank == 1 else out.shape[-1]
    if k is None:
        raise ValueError(
            f"classify(output={name!r}): the output's number of classes is "
            f"unknown (shape {out.shape}); give its last axis a fixed size."
        )
    names = spec.class_names or tuple(str(i) for i in range(k))
    if len(names) != k:
        raise ValueError(
            f"classify(class_names=...) has {len(names)} names, but output "
            f"{name!r} has {k} scores (shape {out.shape})."
        )

    def answer(serialized):
        scores = tf.cast(model_outputs(serialized)[name], tf.float32)
        scores = tf.reshape(scores, [-1, k])
        classes = tf.tile(tf.constant([list(names)]), [tf.shape(scores)[0], 1])
        return {
            signatures_lib.SCORES_KEY: scores,
            signatures_lib.CLASSES_KEY: classes,
        }

    return answer


def _regress(spec, name, out: tf.TensorSpec, model_outputs):
    del spec
    one_value = out.shape.rank == 1 or (out.shape.rank == 2 and out.shape[-1] == 1)
    if not out.dtype.is_floating or not one_value:
        raise ValueError(
            f"regress(output={name!r}) needs one float value per example "
            f"(shape [batch] or [batch, 1]); the output is {out.dtype.name} "
            f"{out.shape}. Use classify() or predict() for it."
        )

    def answer(serialized):
        value = tf.cast(model_outputs(serialized)[name], tf.float32)
        return {signatures_lib.OUTPUTS_KEY: value}

    return answer


_ANSWERS = {"classify": _classify, "regress": _regress}


def shared_input_keys(specs: Mapping | None) -> list[str]:
    """The keys of the signatures that must read one `inputs` tensor
    (`classify` and `regress`, for MultiInference)."""
    return [
        key
        for key, spec in (specs or {}).items()
        if isinstance(spec, SignatureSpec) and spec.kind in _ANSWERS
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
