"""TF Serving's REST API over HTTP/1.1 (its `api_rest`):

    GET  /v1/models/M[/versions/V|/labels/L]            model status
    GET  /v1/models/M[/versions/V|/labels/L]/metadata   signature defs
    POST /v1/models/M[/versions/V|/labels/L]:predict|classify|regress

Requests run in a pool of `threads` threads; a body over `max_body_bytes`
is refused (413) before it is read. Errors are `{"error": "..."}` with the
HTTP status TF Serving maps its status code to.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import re

import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from kerassave_callbacks.core import served as served_lib
from kerassave_callbacks.server import rest_json

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?$"
)
# TF Serving's http_server: status code -> HTTP status.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "UNAUTHENTICATED": 401,
}


class _Reply(Exception):
    """An answer other than 200: its HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RestApi:
    """The REST verbs over a `ModelServer`, one call per request.

    Example:

        status, body = RestApi(server).handle("GET", "/v1/models/digits", b"")
    """

    def __init__(self, server):
        self.server = server

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """Returns the HTTP status and the JSON reply of one request."""
        try:
            return 200, self._answer(method, path, body)
        except _Reply as e:
            return e.status, {"error": str(e)}
        except (served_lib.ServingError, tf.errors.OpError) as e:
            code = served_lib.code_of(e)
            return HTTP_STATUS.get(code, 500), {"error": served_lib.first_line(e)}

    def _answer(self, method: str, path: str, body: bytes) -> dict:
        match = _PATH.match(path.split("?", 1)[0])
        wants_post = bool(match and match["verb"])
        if not match or method != ("POST" if wants_post else "GET"):
            raise _Reply(400 if match else 404, f"Malformed request: {method} {path}")
        if not wants_post:
            return self._get(match)
        request = _request_of(match["verb"])
        _fill_spec(request.model_spec, match)
        parsed = _parse(body)
        signature = parsed.get("signature_name", "")
        if not isinstance(signature, str):
            raise _Reply(400, f"'signature_name' must be a string, got {signature!r}")
        request.model_spec.signature_name = signature
        return getattr(self, "_" + match["verb"])(parsed, request)

    def _get(self, match) -> dict:
        if match["metadata"]:
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            request.metadata_field.append("signature_def")
        else:
            request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, match)
        if match["metadata"]:
            return rest_json.metadata_json(self.server.get_model_metadata(request))
        return rest_json.message_json(self.server.get_model_status(request))

    def _predict(self, body: dict, request) -> dict:
        def fill_inputs(signature):  # on the version that answers
            rest_json.fill_predict_request(body, request, dict(signature.inputs))

        reply = self.server.predict(request, prepare=fill_inputs)
        return rest_json.predict_json(reply, rest_json.format_of(body))

    def _classify(self, body: dict, request) -> dict:
        rest_json.fill_examples_request(body, request)
        return rest_json.classify_json(self.server.classify(request))

    def _regress(self, body: dict, request) -> dict:
        rest_json.fill_examples_request(body, request)
        return rest_json.regress_json(self.server.regress(request))


def _fill_spec(spec, match) -> None:
    """The model spec a URL names (version and label are one oneof: set
    only the one given)."""
    spec.name = match["name"]
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]


def _request_of(verb: str):
    return {
        "predict": predict_pb2.PredictRequest,
        "classify": classification_pb2.ClassificationRequest,
        "regress": regression_pb2.RegressionRequest,
    }[verb]()


def _parse(body: bytes) -> dict:
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Reply(400, f"JSON Parse error: {e}") from e
    if not isinstance(parsed, dict):
        raise _Reply(
            400, f"The body must be a JSON object, got {type(parsed).__name__}"
        )
    return parsed


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body leave in two writes: without TCP_NODELAY the
    # second waits for the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    timeout = 30  # an idle keep-alive connection gives its thread back
    api: RestApi
    max_body_bytes: int

    def do_GET(self):
        self._reply(*self.api.handle("GET", self.path, b""))

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return self._reply(400, {"error": "Content-Length is not a number."})
        if length > self.max_body_bytes:
            self.close_connection = True
            return self._reply(
                413,
                {
                    "error": f"The body has {length} bytes, more than the "
                    f"{self.max_body_bytes} this server takes "
                    "(--max_request_bytes)."
                },
            )
        self._reply(*self.api.handle("POST", self.path, self.rfile.read(length)))

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, indent=1).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        logging.vlog(1, "REST %s " + format, self.address_string(), *args)


class RestServer(http.server.HTTPServer):
    """The HTTP server: requests answered by a pool of threads.

    Example:

        rest = RestServer(("127.0.0.1", 8501), RestApi(server), threads=8)
        rest.serve_forever()  # in a thread; rest.shutdown() from another
    """

    daemon_threads = True

    def __init__(self, address, api: RestApi, *, threads: int, max_body_bytes: int):
        handler = type(
            "Handler", (_Handler,), {"api": api, "max_body_bytes": max_body_bytes}
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="rest"
        )  # before binding: a failed bind closes the server, and the pool
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self._pool.submit(self._process, request, client_address)

    def _process(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
