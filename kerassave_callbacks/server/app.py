"""Both servers over the models, started and stopped as one: what
`kerassave serve` runs.

Start-up is TF Serving's: the versions on disk are loaded (and their
warm-up replayed) before the ports open, then a poller follows the
directories every `poll_seconds`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading

from kerassave_callbacks import _checks
from kerassave_callbacks.server import config as config_lib
from kerassave_callbacks.server import grpc_api, rest, service


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """How `kerassave serve` runs (its flags, as values).

    Args:
      host: the address both servers bind. Defaults to loopback.
      rest_api_port: the REST port; 0 picks a free one. Defaults to 8501.
      port: the gRPC port; 0 picks a free one. Defaults to 8500.
      poll_seconds: the wait between polls of the directories. Defaults to 1.
      config_poll_seconds: how often the model config file (when the models
        come from one) is read again, at the next poll; 0 reads it once.
        Defaults to 0 (TF Serving's `--model_config_file_poll_wait_seconds`).
      max_load_retries: loads of a failing version tried again. Defaults to 5.
      load_retry_seconds: the wait between them. Defaults to 60.
      rest_threads: threads answering REST requests. Defaults to 8.
      grpc_threads: threads answering gRPC requests. Defaults to 8.
      max_request_bytes: the largest request body or message. Defaults to
        64 MiB.
    """

    host: str = "127.0.0.1"
    rest_api_port: int = 8501
    port: int = 8500
    poll_seconds: float = 1.0
    config_poll_seconds: float = 0.0
    max_load_retries: int = 5
    load_retry_seconds: float = 60.0
    rest_threads: int = 8
    grpc_threads: int = 8
    max_request_bytes: int = 64 << 20

    def __post_init__(self):
        for name in ("rest_api_port", "port", "max_load_retries"):
            _checks.check_count(name, getattr(self, name), minimum=0)
        for name in ("rest_threads", "grpc_threads", "max_request_bytes"):
            _checks.check_count(name, getattr(self, name))
        _checks.check_seconds("poll_seconds", self.poll_seconds, positive=True)
        _checks.check_seconds("load_retry_seconds", self.load_retry_seconds)
        _checks.check_seconds("config_poll_seconds", self.config_poll_seconds)


class Serving:
    """The running servers; `close()` stops them and unloads every version.

    Example:

        with Serving([ModelConfig("digits", "exports")], ServeOptions(port=0,
                     rest_api_port=0)) as serving:
            print(serving.rest_port, serving.grpc_port)

    Args:
      configs: the models to serve.
      options: ports, threads, polling.
      config_file: the model config file `configs` were read from, read
        again every `options.config_poll_seconds` when that is not 0.
    """

    def __init__(
        self,
        configs: list[config_lib.ModelConfig],
        options: ServeOptions,
        config_file: str = "",
    ):
        self.model_server = service.ModelServer(
            configs,
            max_load_retries=options.max_load_retries,
            retry_seconds=options.load_retry_seconds,
        )
        self.model_server.poll()
        self._grpc, self.grpc_port = grpc_api.grpc_server(
            self.model_server,
            f"{options.host}:{options.port}",
            threads=options.grpc_threads,
            max_message_bytes=options.max_request_bytes,
        )
        try:
            self._rest = rest.RestServer(
                (options.host, options.rest_api_port),
                rest.RestApi(self.model_server),
                threads=options.rest_threads,
                max_body_bytes=options.max_request_bytes,
            )
        except OSError:  # the REST port is taken: stop what started
            self._grpc.stop(grace=None)
            self.model_server.close()
            raise
        self.rest_port = self._rest.server_address[1]
        self._rest_thread = threading.Thread(
            target=self._rest.serve_forever, name="rest", daemon=True
        )
        self._rest_thread.start()
        reread = None
        if config_file and options.config_poll_seconds:
            reread = functools.partial(config_lib.read_config_file, config_file)
        self.model_server.follow(
            options.poll_seconds, reread, options.config_poll_seconds
        )

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._rest.shutdown()
        self._rest.server_close()
        self._grpc.stop(grace=1).wait()
        self.model_server.close()
