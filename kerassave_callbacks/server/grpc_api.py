"""TF Serving's gRPC services over a `ModelServer`, with the protos and
service definitions of tensorflow-serving-api: `PredictionService`
(Predict, Classify, Regress, MultiInference, GetModelMetadata) and
`ModelService.GetModelStatus` (its HandleReloadConfigRequest answers
UNIMPLEMENTED: the configuration is the command line's)."""

from __future__ import annotations

import concurrent.futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from kerassave_callbacks.core import served as served_lib


def _answer(method):
    """A servicer method that calls `method` of the ModelServer and turns
    its errors into TF Serving's status codes."""

    def call(self, request, context):
        try:
            return method(self.server, request)
        except (served_lib.ServingError, tf.errors.OpError) as e:
            code = getattr(grpc.StatusCode, served_lib.code_of(e))
            context.abort(code, served_lib.first_line(e))

    call.__name__ = method.__name__
    return call


def _servicer(base, **methods):
    """A servicer class of `base` whose methods answer through `_answer`."""

    def __init__(self, server):
        self.server = server

    members = {name: _answer(method) for name, method in methods.items()}
    return type(base.__name__, (base,), {"__init__": __init__, **members})


def grpc_server(model_server, address: str, *, threads: int, max_message_bytes: int):
    """A started `grpc.Server` answering TF Serving's services at `address`
    ("127.0.0.1:8500"); returns it and the port it bound (for port 0).

    Example:

        server, port = grpc_server(model_server, "127.0.0.1:8500", threads=8,
                                   max_message_bytes=64 << 20)
    """
    from kerassave_callbacks.server import service

    cls = service.ModelServer
    prediction = _servicer(
        prediction_service_pb2_grpc.PredictionServiceServicer,
        Predict=cls.predict,
        Classify=cls.classify,
        Regress=cls.regress,
        MultiInference=cls.multi_inference,
        GetModelMetadata=cls.get_model_metadata,
    )
    models = _servicer(
        model_service_pb2_grpc.ModelServiceServicer,
        GetModelStatus=cls.get_model_status,
    )
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        prediction(model_server), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        models(model_server), server
    )
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind the gRPC port at {address}")
    server.start()
    return server, port
