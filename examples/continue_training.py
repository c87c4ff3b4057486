"""Trains an exported version further with no model code, in TF1 sessions.

Runs the `train` signature of the newest version, saves the trained
variables with the export's own saver, restores them into the `eval` graph
and evaluates there: the eval loss goes down. Only the SavedModel is used,
as a C++ or Java client would use it.

    python examples/continue_training.py --export_dir=exports --steps=50
"""

from __future__ import annotations

import os
import sys
import tempfile

from kerassave_callbacks import _startup  # noqa: E402 (imports no TensorFlow)

# TensorFlow's C++ start-up lines kept off the terminal (unless you set
# TF_CPP_MIN_LOG_LEVEL): the package's helper for its own entry points.
_startup.import_tensorflow()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

_EXPORT_DIR = flags.DEFINE_string("export_dir", "exports", "Base directory.")
_STEPS = flags.DEFINE_integer("steps", 50, "Training steps.", lower_bound=1)


def _feeds(signature, x, y) -> dict:
    return {
        signature.inputs["pixels"].name: x,
        signature.inputs["logits_target"].name: y,
    }


def _evaluate(path: str, x, y, checkpoint: str | None = None) -> float:
    """The eval loss of the export, or of `checkpoint`'s variables."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["eval"], path)
        if checkpoint:
            saver = meta.saver_def
            sess.run(saver.restore_op_name, {saver.filename_tensor_name: checkpoint})
        signature = meta.signature_def["eval"]
        return float(sess.run(signature.outputs["loss"].name, _feeds(signature, x, y)))


def _train(path: str, x, y, steps: int, checkpoint: str) -> list[float]:
    """Runs `steps` train steps; saves the variables to `checkpoint`."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["train"], path)
        signature = meta.signature_def["train"]
        feeds = _feeds(signature, x, y)
        losses = [
            float(sess.run(signature.outputs["loss"].name, feeds)) for _ in range(steps)
        ]
        saver = meta.saver_def
        sess.run(saver.save_tensor_name, {saver.filename_tensor_name: checkpoint})
    return losses


def continue_training(export_dir: str, steps: int) -> tuple[float, float]:
    """(eval loss before, eval loss after) `steps` more training steps."""
    path = digits.newest_version(export_dir)
    (x, y), (x_val, y_val) = digits.load_digits()
    before = _evaluate(path, x_val, y_val)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = os.path.join(work, "variables")
        _train(path, x, y, steps, checkpoint)
        after = _evaluate(path, x_val, y_val, checkpoint)
    return before, after


def main(argv):
    del argv
    # TF1 sessions are what this example shows: TF logs its v1 loader as
    # deprecated and each restore as INFO, through two handlers. Errors only.
    tf.get_logger().setLevel("ERROR")
    before, after = continue_training(_EXPORT_DIR.value, _STEPS.value)
    print(f"eval loss before: {before:.4f}")
    print(f"eval loss after {_STEPS.value} train steps: {after:.4f}")


if __name__ == "__main__":
    app.run(main)
