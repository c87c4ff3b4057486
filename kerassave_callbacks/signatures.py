"""Serving signatures: what the `serve` MetaGraph of an export answers.

TF Serving has an API per signature method: Predict (`predict()`, and
`examples()` for clients that send serialized `tf.Example`s), Classify
(`classify()`), Regress (`regress()`) and MultiInference (several of
`classify`/`regress` at once, which read one shared `inputs` tensor). Pass
a dict of signature key -> spec as `signatures=` to `export_saved_model`,
`VersionedExporter` or `SavedModelExporter`; `serving_default` is the
model's `predict()` unless the dict names another.

A spec is a value from this module, or a `tf.function` with an
`input_signature` that calls the model: an endpoint with its own
preprocessing, as Keras' `ExportArchive` has.

A leaf: no TensorFlow at import, no Keras (the graphs are built by
`core.serving_signatures`; the kinds' answers import TF when traced).

Example:

    from kerassave_callbacks import SavedModelExporter, signatures

    SavedModelExporter(
        "/tmp/exports",
        signatures={
            "classify": signatures.classify(class_names=["cat", "dog"]),
            "examples": signatures.examples(),
        },
    )
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from kerassave_callbacks.core import modes

PREDICT_METHOD = modes.SERVE.method_name
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

DEFAULT_KEY = modes.SERVE.signature_key
# Input and output keys that TF Serving's Classify and Regress APIs require.
INPUTS_KEY = "inputs"
SCORES_KEY = "scores"
CLASSES_KEY = "classes"
OUTPUTS_KEY = "outputs"
# Input key of `examples()`.
EXAMPLES_KEY = "examples"
# The signature keys of the train and eval MetaGraphs.
_MODE_KEYS = (modes.TRAIN.signature_key, modes.EVAL.signature_key)


@dataclasses.dataclass(frozen=True)
class SignatureKind:
    """One kind of serving signature: how TF Serving calls it and what it
    answers. `register()` adds one of your own beside the built-in
    `predict`, `examples`, `classify` and `regress`; specs, the
    `--export_signatures` flag, warm-up requests, the publish gate and
    `kerassave verify` then know it by its name.

    Example:

        def top_class(spec, output_specs, model):
            name = spec.output_name(output_specs, model.name)
            return lambda outputs: {"top": tf.argmax(outputs[name], axis=-1)}

        register(SignatureKind("top_class", answer=top_class))
        SavedModelExporter("/tmp/exports",
                           signatures={"top": SignatureSpec("top_class")})

    Attributes:
      name: the kind's name, as `SignatureSpec.kind` and the flag spell it.
      method_name: the `SignatureDef.method_name`, i.e. TF Serving's API
        (`PREDICT_METHOD`; `CLASSIFY_METHOD` or `REGRESS_METHOD`, which
        MultiInference serves together from one `inputs` tensor). Warm-up
        requests go through that API.
      input_key: None: the model's own inputs; else the key of the one
        input, serialized `tf.Example`s parsed into the model's inputs.
      answer: None: the model's outputs as they are. Else, while tracing,
        `answer(spec, output_specs, model)` (output name -> `tf.TensorSpec`)
        raises `ValueError` for a model it cannot serve, or returns a
        function from the model's outputs (name -> tensor) to the
        signature's (key -> tensor), in TF ops: traced into the signature
        and run eagerly for the answers the publish gate expects.
    """

    name: str
    method_name: str = PREDICT_METHOD
    input_key: str | None = None
    answer: Callable | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(
                "A signature kind's name must be a Python identifier (the "
                f"flag --export_signatures names it). Received: {self.name!r}."
            )
        shares_inputs = self.method_name in (CLASSIFY_METHOD, REGRESS_METHOD)
        if self.method_name != PREDICT_METHOD and not shares_inputs:
            raise ValueError(
                f"SignatureKind {self.name!r}: method_name must be one of TF "
                f"Serving's {[PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD]}. "
                f"Received: {self.method_name!r}."
            )
        if shares_inputs and self.input_key != INPUTS_KEY:
            raise ValueError(
                f"SignatureKind {self.name!r}: Classify and Regress take "
                f"serialized examples as {INPUTS_KEY!r}; pass input_key="
                f"{INPUTS_KEY!r}. Received: {self.input_key!r}."
            )


def register(kind: SignatureKind) -> SignatureKind:
    """Adds a signature kind under its name; returns it.

    Example:

        register(SignatureKind("top_class", answer=top_class))

    Raises:
      TypeError: `kind` is not a `SignatureKind`.
      ValueError: another kind has that name.
    """
    if not isinstance(kind, SignatureKind):
        raise TypeError(f"register() takes a SignatureKind. Received: {kind!r}.")
    if KINDS.get(kind.name, kind) != kind:
        raise ValueError(
            f"A signature kind named {kind.name!r} is registered already "
            f"({KINDS[kind.name]}); pick another name."
        )
    KINDS[kind.name] = kind
    return kind


# Name -> kind: the built-in kinds, and those `register()` added.
KINDS: dict[str, SignatureKind] = {}


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """One serving signature of a registered kind; `predict()`,
    `examples()`, `classify()` and `regress()` make the built-in ones.

    Example:

        spec = classify(output="label", class_names=["no", "yes"])
        spec.method_name  # "tensorflow/serving/classify"

    Attributes:
      kind: the name of a registered `SignatureKind` ("predict",
        "examples", "classify", "regress" or one of your own).
      output: the model output that `classify`/`regress` answer with (None:
        the model's only output).
      class_names: the `classes` of `classify`, one per score (None: the
        class index as text).
      feature_spec: input name -> `tf.io.FixedLenFeature`, replacing the
        feature spec derived from the model's inputs for those inputs.
    """

    kind: str
    output: str | None = None
    class_names: tuple[str, ...] | None = None
    feature_spec: Mapping | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"Unknown signature kind {self.kind!r}. Expected one of "
                f"{sorted(KINDS)}."
            )
        if self.output is not None and not isinstance(self.output, str):
            raise TypeError(
                f"`output` must be the name of a model output (a str). "
                f"Received: output={self.output!r}."
            )
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise TypeError(
                    "`class_names` must be a list of str, one per score. "
                    f"Received: class_names={names!r}."
                )
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    "`class_names` must be a non-empty list of str. Received: "
                    f"class_names={list(names)!r}."
                )
            object.__setattr__(self, "class_names", tuple(names))
        if self.feature_spec is not None and not isinstance(self.feature_spec, Mapping):
            raise TypeError(
                "`feature_spec` must be a dict of input name -> "
                f"tf.io.FixedLenFeature. Received: feature_spec={self.feature_spec!r}."
            )

    @property
    def method_name(self) -> str:
        """Its kind's `method_name`."""
        return KINDS[self.kind].method_name

    @property
    def input_key(self) -> str | None:
        """Its kind's `input_key` (None: the model's own inputs)."""
        return KINDS[self.kind].input_key

    def output_name(self, output_specs: Mapping, model_name: str) -> str:
        """The model output this signature answers with: `output`, or the
        model's only output.

        Raises:
          ValueError: `output` is not an output of the model, or it is None
            and the model has several.
        """
        names = list(output_specs)
        if self.output is None:
            if len(names) == 1:
                return names[0]
            raise ValueError(
                f"Model {model_name!r} has outputs {names}: name the one to "
                f"{self.kind} with, e.g. {self.kind}(output={names[0]!r})."
            )
        if self.output not in output_specs:
            raise ValueError(
                f"{self.kind}(output={self.output!r}): model {model_name!r} has "
                f"no such output. Its outputs are {names}."
            )
        return self.output


def predict() -> SignatureSpec:
    """The model's inputs -> its outputs (what `serving_default` is by
    default), for TF Serving's Predict API.

    Example:

        signatures={"serving_default": predict()}
    """
    return SignatureSpec("predict")


def examples(feature_spec: Mapping | None = None) -> SignatureSpec:
    """Predict from serialized `tf.Example`s: input key `examples` (a string
    batch), parsed into the model's inputs by input name; outputs as
    `predict()`.

    Float inputs are read from `float_list`, integer inputs from
    `int64_list` (cast to the input's dtype), string inputs from
    `bytes_list`; each input needs a fixed shape after the batch axis.

    Example:

        signatures={"examples": examples()}

    Args:
      feature_spec: input name -> `tf.io.FixedLenFeature` for inputs whose
        feature cannot be derived (an unknown inner dimension, say).
        Defaults to None.
    """
    return SignatureSpec("examples", feature_spec=feature_spec)


def classify(
    output: str | None = None,
    class_names: Sequence[str] | None = None,
    feature_spec: Mapping | None = None,
) -> SignatureSpec:
    """TF Serving's Classify API: input `inputs` (serialized `tf.Example`s),
    outputs `scores` (float, [batch, K]: what the model outputs,
    probabilities or logits alike) and `classes` (string, [batch, K]).

    Example:

        signatures={"classify": classify(class_names=["cat", "dog", "eel"])}

    Args:
      output: the model output to classify with; required when the model
        has several. Defaults to None.
      class_names: K names for `classes`. Defaults to None (the class index
        as text: "0", "1", ...).
      feature_spec: as in `examples()`. Defaults to None.
    """
    return SignatureSpec(
        "classify", output=output, class_names=class_names, feature_spec=feature_spec
    )


def regress(
    output: str | None = None, feature_spec: Mapping | None = None
) -> SignatureSpec:
    """TF Serving's Regress API: input `inputs` (serialized `tf.Example`s),
    output `outputs` (float, one value per example).

    Example:

        signatures={"regress": regress(output="price")}

    Args:
      output: the model output to answer with, of shape [batch] or
        [batch, 1]; required when the model has several. Defaults to None.
      feature_spec: as in `examples()`. Defaults to None.
    """
    return SignatureSpec("regress", output=output, feature_spec=feature_spec)


def _classify(spec: SignatureSpec, output_specs: Mapping, model):
    """Classify's answer: `scores` [batch, K] float32 and `classes`."""
    import tensorflow as tf

    name = spec.output_name(output_specs, model.name)
    out = output_specs[name]
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

    def answer(outputs):
        scores = tf.reshape(tf.cast(outputs[name], tf.float32), [-1, k])
        classes = tf.tile(tf.constant([list(names)]), [tf.shape(scores)[0], 1])
        return {SCORES_KEY: scores, CLASSES_KEY: classes}

    return answer


def _regress(spec: SignatureSpec, output_specs: Mapping, model):
    """Regress's answer: `outputs`, one float32 value per example."""
    import tensorflow as tf

    name = spec.output_name(output_specs, model.name)
    out = output_specs[name]
    one_value = out.shape.rank == 1 or (out.shape.rank == 2 and out.shape[-1] == 1)
    if not out.dtype.is_floating or not one_value:
        raise ValueError(
            f"regress(output={name!r}) needs one float value per example "
            f"(shape [batch] or [batch, 1]); the output is {out.dtype.name} "
            f"{out.shape}. Use classify() or predict() for it."
        )
    return lambda outputs: {OUTPUTS_KEY: tf.cast(outputs[name], tf.float32)}


register(SignatureKind("predict"))
register(SignatureKind("examples", input_key=EXAMPLES_KEY))
register(SignatureKind("classify", CLASSIFY_METHOD, INPUTS_KEY, _classify))
register(SignatureKind("regress", REGRESS_METHOD, INPUTS_KEY, _regress))


def is_endpoint(spec) -> bool:
    """True for a custom endpoint: a `tf.function` with an input signature."""
    return hasattr(spec, "get_concrete_function") and hasattr(spec, "input_signature")


def normalized(signatures) -> dict | None:
    """The `signatures=` argument, checked: signature key -> spec, with
    `serving_default` present; None for the default (`predict()` alone).

    Raises:
      TypeError: not a dict, a key that is not a str, or a spec that is
        neither a `SignatureSpec` nor a `tf.function`.
      ValueError: a `tf.function` without an `input_signature`, or an empty
        or reserved key.
    """
    if signatures is None:
        return None
    if not isinstance(signatures, Mapping):
        raise TypeError(
            "`signatures` must be a dict of signature key -> spec, e.g. "
            "{'classify': signatures.classify()}. Received: "
            f"signatures={signatures!r}."
        )
    out = {}
    for key, spec in signatures.items():
        if not isinstance(key, str):
            raise TypeError(
                f"Signature keys must be str. Received: {key!r} in `signatures`."
            )
        if not key or key.startswith("__"):
            raise ValueError(
                f"Invalid signature key {key!r} in `signatures`: use a "
                "non-empty str that does not start with '__'."
            )
        if key in _MODE_KEYS:
            raise ValueError(
                f"Signature key {key!r} in `signatures` is the key of the "
                f"{key} graph's own signature; name the serving signature "
                f"otherwise, e.g. {key + '_serving'!r}."
            )
        if is_endpoint(spec):
            if spec.input_signature is None:
                raise ValueError(
                    f"signatures[{key!r}] is a tf.function without an "
                    "input_signature; TF Serving needs fixed input specs. "
                    "Decorate it with @tf.function(input_signature=[...])."
                )
        elif not isinstance(spec, SignatureSpec):
            raise TypeError(
                f"signatures[{key!r}] must be a spec from "
                "kerassave_callbacks.signatures (predict(), examples(), "
                "classify(), regress(), SignatureSpec(kind)) or a tf.function "
                f"with an input_signature. Received: {spec!r}."
            )
        out[key] = spec
    out.setdefault(DEFAULT_KEY, predict())
    if list(out) == [DEFAULT_KEY] and out[DEFAULT_KEY] == predict():
        return None  # The default: exports stay exactly as without it.
    return out


def parse(text: str) -> dict | None:
    """The `--export_signatures` flag's value as `signatures=`.

    A comma list of built-in kinds, each optionally as `key=kind`; a bare
    kind is its own key (`classify,regress` gives keys `classify` and
    `regress`).

    Example:

        parse("serving_default=examples,classify")

    Raises:
      ValueError: an unknown kind, naming the kinds there are.
    """
    out = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, _, kind = item.rpartition("=")
        key, kind = key.strip() or kind.strip(), kind.strip()
        if kind not in KINDS:
            raise ValueError(
                f"Unknown signature kind {kind!r} in --export_signatures="
                f"{text!r}. Expected a comma list of {sorted(KINDS)}, each "
                "optionally as key=kind."
            )
        out[key] = SignatureSpec(kind)
    return normalized(out) if out else None
