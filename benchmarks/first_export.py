"""The first export of a big model, measured side by side in one run.

    python benchmarks/first_export.py [--models=ResNet50,EfficientNetB0,Dense300]

For each model (`keras.applications` ones built with weights=None, nothing
downloaded, at 96x96 with 10 classes; `Dense300`, 300 Dense(16) layers, about
1800 variables with the optimizer's), compiled with Adam, prints:

- the first full export (tracing the train, eval and serve graphs, writing
  and committing a version) through `VersionedExporter`, against Keras'
  `model.export()` of the same model (target <= 1.5, #30);
- the `saved_model.pb` of the full export against Keras' (target <= 1.5),
  and of its serve graph alone;
- a later export of the same model (graphs cached), and the first
  `serving_only=True` export (serve graph alone) of another copy, for
  scale;
- how long the first export with `async_export=True` blocks training
  (tracing; saving goes on in the background) against the sync one;
- the first full export with the publish gate (the default) against one
  with `validate=False` of another copy (information).

Each model is measured in both orders (Keras first, then ours on a fresh
copy; ours first, then Keras), `--pairs` times (default 1), and the ratio
is the mean over all of them, so that neither side profits from what the
other warmed up; the range of the single ratios is printed beside it (on a
shared VM `model.export()` alone swings by half from one run to the next).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _models  # noqa: E402  (benchmarks/_models.py)
from absl import app, flags, logging  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

from kerassave_callbacks import VersionedExporter  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models",
    ["ResNet50", "EfficientNetB0", "Dense300"],
    "keras.applications names, or Dense300 (300 Dense layers with Adam).",
)
_PAIRS = flags.DEFINE_integer(
    "pairs", 1, "How many times each model is measured in both orders."
)


def _first_export_of_a_copy(name: str, where: str, **options) -> float:
    """Seconds the first export of a fresh `name` takes (close() not counted:
    with `async_export` it is the time training was blocked)."""
    exporter = VersionedExporter(where, **options)
    fresh = _models.by_name(name)
    seconds = _models.seconds(lambda: exporter.export(fresh))
    exporter.close()
    return seconds


def measure(name: str, work: str, ours_first: bool) -> dict:
    model = _models.by_name(name)
    keras_dir = os.path.join(work, f"keras-{name}-{ours_first}")
    exporter = VersionedExporter(os.path.join(work, f"ours-{name}-{ours_first}"))
    steps = [
        ("keras", lambda: model.export(keras_dir, verbose=False)),
        ("ours", lambda: exporter.export(model)),
    ]
    ordered = steps[::-1] if ours_first else steps
    times = {key: _models.seconds(fn) for key, fn in ordered}
    times["later"] = _models.seconds(lambda: exporter.export(model))
    exporter.close()
    for key, options in (
        ("serving_only", {"serving_only": True}),
        ("ungated", {"validate": False}),
        ("async_blocked", {"async_export": True}),
    ):
        where = os.path.join(work, f"{key}-{name}-{ours_first}")
        times[key] = _first_export_of_a_copy(name, where, **options)
    newest = os.path.join(exporter.export_dir, str(exporter.versions()[-1]))
    ours = saved_model_pb2.SavedModel.FromString(
        open(os.path.join(newest, "saved_model.pb"), "rb").read()
    )
    times["pb"] = ours.ByteSize()
    times["serve_pb"] = next(
        m.ByteSize() for m in ours.meta_graphs if "serve" in m.meta_info_def.tags
    )
    times["keras_pb"] = os.path.getsize(os.path.join(keras_dir, "saved_model.pb"))
    return times


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as work:
        for name in _MODELS.value:
            orders = [False, True] * _PAIRS.value
            runs = [
                measure(name, os.path.join(work, str(i)), ours_first)
                for i, ours_first in enumerate(orders)
            ]
            ratios = [r["ours"] / r["keras"] for r in runs]
            ratio = sum(ratios) / len(ratios)
            run = runs[0]
            print(f"{name}:")
            for r, ours_first in zip(runs, orders, strict=True):
                order = "ours first" if ours_first else "keras first"
                print(
                    f"  {order:12s} first full export {r['ours']:6.2f} s, "
                    f"model.export() {r['keras']:6.2f} s, later export "
                    f"{r['later']:5.2f} s, first serving_only export "
                    f"{r['serving_only']:5.2f} s, first async export blocks "
                    f"{r['async_blocked']:5.2f} s"
                )
            rows = [
                ("first full export / model.export()", ratio, 1.5),
                ("saved_model.pb / Keras'", run["pb"] / run["keras_pb"], 1.5),
                ("serve graph alone / Keras'", run["serve_pb"] / run["keras_pb"], None),
                (
                    "first export, gated / ungated",
                    sum(r["ours"] / r["ungated"] for r in runs) / len(runs),
                    None,
                ),
            ]
            for label, value, target in rows:
                verdict = ""
                if target is not None:
                    verdict = f"(target <= {target})  " + (
                        "ok" if value <= target else "OVER TARGET"
                    )
                print(f"  {label:38s} {value:6.2f}  {verdict}")
            print(
                f"  single first full export / model.export() ratios: "
                f"{min(ratios):.2f} to {max(ratios):.2f}"
            )
            print(
                f"  saved_model.pb: ours {run['pb'] / 2**20:.1f} MiB "
                f"(serve {run['serve_pb'] / 2**20:.1f}), Keras "
                f"{run['keras_pb'] / 2**20:.1f} MiB"
            )


if __name__ == "__main__":
    app.run(main)
