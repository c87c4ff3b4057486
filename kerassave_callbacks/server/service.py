"""TF Serving's request API over the models `kerassave serve` follows:
request protos of tensorflow-serving-api in, response protos out. The gRPC
services call it directly; the REST API turns JSON into the same requests
first, as TF Serving's own REST handler does.

Errors are `ServingError`s carrying TF Serving's status code; a graph that
fails (a shape TF refuses) raises TF's own `OpError`, whose code is the
same gRPC code (`served.code_of`).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from kerassave_callbacks import signatures as signatures_lib
from kerassave_callbacks.core import modes
from kerassave_callbacks.core import served as served_lib
from kerassave_callbacks.server import models as models_lib

ServingError = served_lib.ServingError
_SIGNATURE_DEF = "signature_def"


class ModelServer:
    """The models served, and the answers to TF Serving's requests.

    Example:

        server = ModelServer([ModelConfig("digits", "/models/digits")])
        server.poll()
        reply = server.predict(request)  # a PredictRequest for "digits"

    Args:
      configs: the models to follow.
      **model_options: `ServedModel`'s load retry options.
    """

    def __init__(self, configs, **model_options):
        self._model_options = model_options
        # Replaced whole (`reconfigure`), never mutated: requests read it.
        self.models = {
            c.name: models_lib.ServedModel(c, **model_options) for c in configs
        }
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # Following the directories.

    def poll(self) -> None:
        """One poll of every model's directory."""
        for model in self.models.values():
            model.poll()

    def reconfigure(self, configs) -> None:
        """Serves `configs` from now on, as TF Serving takes a reloaded model
        config: a model by a new name (or at a new base path) is added and
        loaded by the next poll, one no longer named is unloaded, the others
        follow their new version policy and labels from the next poll on.
        Called by the poller's thread (`follow`), or before it starts."""
        old, new = self.models, {}
        for config in configs:
            model = old.get(config.name)
            if model is not None and model.config.base_path == config.base_path:
                model.config = config
            else:
                model = models_lib.ServedModel(config, **self._model_options)
            new[config.name] = model
        self.models = new
        for name, model in old.items():
            if new.get(name) is not model:
                model.close()
                logging.info("No longer serving model %s", name)

    def follow(
        self, every_seconds: float, configs=None, configs_every_seconds: float = 0.0
    ) -> None:
        """Polls in a background thread until `close`. With `configs` (a
        function returning the models to serve: a config file re-read) it
        also `reconfigure`s by what it returns every `configs_every_seconds`,
        at the next poll; when it raises, the models stay as they are."""

        def loop():
            due = time.monotonic() + configs_every_seconds
            while not self._stop.wait(every_seconds):
                if configs is not None and time.monotonic() >= due:
                    due = time.monotonic() + configs_every_seconds
                    self._reread(configs)
                try:
                    self.poll()
                except Exception:  # never let the poller die
                    logging.exception("Polling the model directories failed")

        self._poller = threading.Thread(target=loop, name="poller", daemon=True)
        self._poller.start()

    def _reread(self, configs) -> None:
        try:
            self.reconfigure(configs())
        except Exception as e:  # a file half written, say: try again later
            logging.warning("Keeping the models served: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        for model in self.models.values():
            model.close()

    # Looking up.

    def model(self, name: str) -> models_lib.ServedModel:
        if name not in self.models:
            raise ServingError(
                f"Servable not found for request: Latest({name})", "NOT_FOUND"
            )
        return self.models[name]

    def acquire(self, spec):
        """The loaded version a `ModelSpec` names, held for a `with` block."""
        return self.model(spec.name).acquire(_version_of(spec), spec.version_label)

    # TF Serving's requests.

    def predict(self, request, prepare=None) -> predict_pb2.PredictResponse:
        """A Predict request. `prepare(signature)`, when given, is called
        first with the `SignatureDef` the request names, on the version that
        answers (the REST API fills the inputs from JSON by its dtypes)."""
        reply = predict_pb2.PredictResponse()
        return self._answer("predict", request, reply, reply.outputs, _tensors, prepare)

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        reply = classification_pb2.ClassificationResponse()
        return self._answer("classify", request, reply, reply.result, _classifications)

    def regress(self, request) -> regression_pb2.RegressionResponse:
        reply = regression_pb2.RegressionResponse()
        return self._answer("regress", request, reply, reply.result, _regressions)

    def _answer(self, method: str, request, reply, part, fill, prepare=None):
        """Runs `Served.<method>` on the version the request names (after
        `prepare`, on the same version); `fill` writes its outputs into
        `part` of `reply`."""
        with self.acquire(request.model_spec) as loaded:
            if prepare is not None:
                prepare(loaded.served.signature(request.model_spec.signature_name))
            outputs = getattr(loaded.served, method)(request)
        _answered(reply.model_spec, request.model_spec, loaded.version)
        fill(part, outputs)
        return reply

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise ServingError("Tasks is empty")
        specs = {(t.model_spec.name, t.model_spec.version.value) for t in request.tasks}
        if len(specs) != 1:
            raise ServingError(
                "All ModelSpecs in a MultiInferenceRequest must access the same "
                "model version."
            )
        with self.acquire(request.tasks[0].model_spec) as loaded:
            replies = loaded.served.multi_inference(request)
        reply = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            result = reply.results.add()
            key = task.model_spec.signature_name or modes.SERVE.signature_key
            _answered(result.model_spec, task.model_spec, loaded.version)
            if task.method_name == signatures_lib.CLASSIFY_METHOD:
                _classifications(result.classification_result, replies[key])
            else:
                _regressions(result.regression_result, replies[key])
        return reply

    def get_model_metadata(self, request):
        fields = list(request.metadata_field)
        if not fields:
            raise ServingError(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        unknown = [f for f in fields if f != _SIGNATURE_DEF]
        if unknown:
            raise ServingError(f"Metadata field(s) not supported: {', '.join(unknown)}")
        with self.acquire(request.model_spec) as loaded:
            defs = loaded.served.signature_defs
        reply = get_model_metadata_pb2.GetModelMetadataResponse()
        reply.model_spec.name = request.model_spec.name
        reply.model_spec.version.value = loaded.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        reply.metadata[_SIGNATURE_DEF].Pack(signature_map)
        return reply

    def get_model_status(self, request):
        spec = request.model_spec
        states = self.model(spec.name).status(_version_of(spec), spec.version_label)
        reply = get_model_status_pb2.GetModelStatusResponse()
        for state in states:
            row = reply.model_version_status.add()
            row.version = state.version
            row.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            row.status.error_code = _error_code(state.error_code)
            row.status.error_message = state.error_message
        return reply


def _version_of(spec) -> int | None:
    """The version a `ModelSpec` names, or None (the newest, or a label)."""
    return spec.version.value if spec.HasField("version") else None


def _answered(reply_spec, request_spec, version: int) -> None:
    """The reply's model spec: the request's name and signature, the
    version that answered."""
    reply_spec.name = request_spec.name
    reply_spec.version.value = version
    reply_spec.signature_name = request_spec.signature_name or modes.SERVE.signature_key


def _tensors(tensors, outputs: dict) -> None:
    for key, value in outputs.items():
        tensors[key].CopyFrom(tf.make_tensor_proto(value))


def _classifications(result, outputs: dict) -> None:
    scores = outputs.get(signatures_lib.SCORES_KEY)
    classes = outputs.get(signatures_lib.CLASSES_KEY)
    shape = (scores if scores is not None else classes).shape
    for row in range(shape[0]):
        classification = result.classifications.add()
        for column in range(shape[1]):
            entry = classification.classes.add()
            if classes is not None:
                entry.label = _text(classes[row, column])
            if scores is not None:
                entry.score = float(scores[row, column])


def _regressions(result, outputs: dict) -> None:
    for value in np.reshape(outputs[signatures_lib.OUTPUTS_KEY], [-1]):
        result.regressions.add().value = float(value)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _error_code(name: str) -> int:
    """A code's number in TF's `error_codes.proto` (gRPC's numbering)."""
    numbers = {code_name: n for n, code_name in served_lib.CODE_NAMES.items()}
    return numbers.get(name, 0)  # "OK"
