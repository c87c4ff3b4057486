"""Exports a digits classifier with TF Serving's Classify signature, then
classifies serialized `tf.Example`s through a TF1 session, as TF Serving's
Classify API does.

    python examples/classify_examples.py --export_dir=classify_exports

A client of a real server sends the same examples in a REST body
(`POST /v1/models/digits:classify`, see docs/signatures.md) or a gRPC
`ClassificationRequest`.
"""

from __future__ import annotations

import os
import sys

from kerassave_callbacks import _startup  # noqa: E402 (imports no TensorFlow)

_startup.import_tensorflow()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from kerassave_callbacks import SavedModelExporter, signatures  # noqa: E402

_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", "classify_exports", "Base directory of the versions."
)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs to train.", lower_bound=1)
_SAMPLES = flags.DEFINE_integer("samples", 5, "Digits to classify.", lower_bound=1)

CLASS_NAMES = [str(d) for d in range(10)]


def train_and_export(export_dir: str, epochs: int) -> str:
    """Trains the digits model, exporting each epoch with `classify` (its
    scores are the model's logits) and `examples` signatures; returns the
    newest version's path."""
    (x, y), validation = digits.load_digits()
    model = digits.build_model()
    exporter = SavedModelExporter(
        export_dir,
        keep=2,
        signatures={
            "classify": signatures.classify(class_names=CLASS_NAMES),
            "examples": signatures.examples(),
        },
        verbose=1,
    )
    model.fit(x, y, validation_data=validation, epochs=epochs, callbacks=[exporter])
    return digits.newest_version(export_dir)


def serialized_examples(pixels: np.ndarray) -> list[bytes]:
    """What a client sends: one `tf.Example` per image, its 64 pixels as
    the float feature named after the model's input."""
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=row))
                }
            )
        ).SerializeToString()
        for row in pixels
    ]


def classify(path: str, examples: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, classes) of the `classify` signature, run as TF Serving runs
    it: the `serve` MetaGraph in a session, the signature's tensors by name."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
        signature = meta.signature_def["classify"]
        scores, classes = sess.run(
            [signature.outputs["scores"].name, signature.outputs["classes"].name],
            {signature.inputs["inputs"].name: examples},
        )
    return scores, classes


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # The v1 loader is used on purpose.
    path = train_and_export(_EXPORT_DIR.value, _EPOCHS.value)
    _, (x, y) = digits.load_digits()
    scores, classes = classify(path, serialized_examples(x[: _SAMPLES.value]))
    print(f"version: {path}")
    for row, truth in zip(range(len(scores)), y, strict=False):
        best = classes[row][np.argmax(scores[row])].decode()
        print(f"classified {best}  true {truth}")


if __name__ == "__main__":
    app.run(main)
