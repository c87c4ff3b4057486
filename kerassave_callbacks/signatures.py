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

A leaf: no TensorFlow, no Keras (the graphs are built by
`core.serving_signatures`).

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
from collections.abc import Mapping, Sequence

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

DEFAULT_KEY = "serving_default"
# Input and output keys that TF Serving's Classify and Regress APIs require.
INPUTS_KEY = "inputs"
SCORES_KEY = "scores"
CLASSES_KEY = "classes"
OUTPUTS_KEY = "outputs"
# Input key of `examples()`.
EXAMPLES_KEY = "examples"
# The signature keys of the train and eval MetaGraphs (`core.modes`).
_MODE_KEYS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """One built-in serving signature; made by `predict()`, `examples()`,
    `classify()` or `regress()`.

    Example:

        spec = classify(output="label", class_names=["no", "yes"])
        spec.method_name  # "tensorflow/serving/classify"

    Attributes:
      kind: "predict", "examples", "classify" or "regress".
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
        """The `SignatureDef.method_name` TF Serving dispatches on."""
        return {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD}.get(
            self.kind, PREDICT_METHOD
        )

    @property
    def takes_examples(self) -> bool:
        """True when the signature's one input is serialized `tf.Example`s."""
        return self.kind != "predict"

    @property
    def input_key(self) -> str | None:
        """The key of the serialized examples input (None for `predict`)."""
        if self.kind == "examples":
            return EXAMPLES_KEY
        return INPUTS_KEY if self.takes_examples else None


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


KINDS = {
    "predict": predict,
    "examples": examples,
    "classify": classify,
    "regress": regress,
}


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
                "classify(), regress()) or a tf.function with an "
                f"input_signature. Received: {spec!r}."
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
        out[key] = KINDS[kind]()
    return normalized(out) if out else None
