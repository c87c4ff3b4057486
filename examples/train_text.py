"""Trains a tiny text classifier on raw strings and serves it from strings.

The model takes raw text: a `TextVectorization` layer (a lookup table
adapted on the corpus) turns it into word ids inside the graph, so the
`serve` signature TF Serving runs takes strings too. The example writes its
own corpus (made-up reviews) under ./text_data, exports versions while it
trains under ./text_exports, then loads the newest version's serve graph,
with no Keras, and scores a few new sentences.

    python examples/train_text.py
    python examples/train_text.py --epochs=30 --export_dir=/models/reviews
"""

from __future__ import annotations

import os
import random

from kerassave_callbacks import _startup  # noqa: E402 (imports no TensorFlow)

# TensorFlow's C++ start-up lines kept off the terminal (unless you set
# TF_CPP_MIN_LOG_LEVEL): the package's helper for its own entry points.
_startup.import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from kerassave_callbacks import define_export_flags, exporter_from_flags  # noqa: E402

_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs to train.", lower_bound=1)
_DATA_DIR = flags.DEFINE_string("data_dir", "text_data", "Where the corpus goes.")

define_export_flags()
flags.FLAGS.set_default("export_dir", "text_exports")
flags.FLAGS.set_default("exports_to_keep", 2)

_GOOD = ["great", "wonderful", "moving", "funny", "brilliant", "charming"]
_BAD = ["awful", "boring", "dull", "clumsy", "tedious", "bland"]
_FILLER = ["the", "film", "plot", "acting", "was", "really", "quite", "story"]
PROBES = ["a brilliant and funny story", "the plot was dull and tedious"]


def write_corpus(data_dir: str, size: int = 400, seed: int = 0) -> str:
    """Writes `label<TAB>sentence` lines; returns the file's path."""
    rng = random.Random(seed)
    lines = []
    for _ in range(size):
        label = rng.randint(0, 1)
        words = rng.sample(_FILLER, 3) + rng.sample(_GOOD if label else _BAD, 2)
        rng.shuffle(words)
        lines.append(f"{label}\t{' '.join(words)}")
    tf.io.gfile.makedirs(data_dir)
    path = os.path.join(data_dir, "reviews.tsv")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def read_corpus(path: str) -> tuple[np.ndarray, np.ndarray]:
    with tf.io.gfile.GFile(path) as f:
        rows = [line.split("\t", 1) for line in f.read().splitlines() if line]
    labels = np.array([float(label) for label, _ in rows], dtype="float32")
    texts = np.array([text for _, text in rows], dtype=object)
    return texts, labels


def build_model(texts: np.ndarray) -> keras.Model:
    vectorize = keras.layers.TextVectorization(max_tokens=64, output_sequence_length=6)
    vectorize.adapt(texts)
    inputs = keras.Input((1,), dtype="string", name="text")
    hidden = keras.layers.Embedding(64, 8)(vectorize(inputs))
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(hidden)
    model = keras.Model(inputs, outputs, name="reviews")
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def serve_newest(export_dir: str, sentences: list[str]) -> dict[str, float]:
    """Scores sentences with the newest version's serve graph (no Keras)."""
    versions = [
        int(v.rstrip("/"))
        for v in tf.io.gfile.listdir(export_dir)
        if v.rstrip("/").isdigit()
    ]
    path = os.path.join(export_dir, str(max(versions)))
    serve = tf.saved_model.load(path, tags=["serve"]).signatures["serving_default"]
    scores = serve(text=tf.constant([[s] for s in sentences]))["positive"].numpy()
    return {s: float(p) for s, p in zip(sentences, scores[:, 0], strict=True)}


def main(argv):
    del argv
    texts, labels = read_corpus(write_corpus(_DATA_DIR.value))
    model = build_model(texts)
    exporter = exporter_from_flags(flags.FLAGS, verbose=1)
    model.fit(
        tf.constant(texts[:, None].astype(str)),
        labels,
        epochs=_EPOCHS.value,
        batch_size=32,
        validation_split=0.2,
        callbacks=[exporter],
        verbose=2,
    )
    for sentence, score in serve_newest(flags.FLAGS.export_dir, PROBES).items():
        print(f"{score:.3f}  {sentence}")


if __name__ == "__main__":
    app.run(main)
