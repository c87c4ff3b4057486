"""The one table of modes: MetaGraph tag, signature key and method name.

Every other module reads these names from here, as TensorFlow's
`export_utils.EXPORT_TAG_MAP` / `SIGNATURE_KEY_MAP` did for the original
`tf.keras.experimental.export_saved_model`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mode:
    """One mode graph of an export.

    Attributes:
      name: the Keras mode name ("train", "test" or "predict").
      tag: the MetaGraph tag that selects this mode's graph.
      signature_key: the key of the mode's signature in that MetaGraph.
      method_name: the `SignatureDef.method_name` of that signature.
    """

    name: str
    tag: str
    signature_key: str
    method_name: str


TRAIN = Mode("train", "train", "train", "tensorflow/supervised/training")
EVAL = Mode("test", "eval", "eval", "tensorflow/supervised/eval")
SERVE = Mode("predict", "serve", "serving_default", "tensorflow/serving/predict")

# Names of the signature outputs of the train and eval graphs.
LOSS_KEY = "loss"
PREDICTIONS_PREFIX = "predictions/"
METRICS_PREFIX = "metrics/"
METRIC_VALUE_SUFFIX = "/value"
TARGET_SUFFIX = "_target"
