"""`kerassave serve`: its flags (named as `tensorflow_model_server`'s) and its
run, until Ctrl-C or SIGTERM. Imported by `kerassave_callbacks.cli` for the
flags; TensorFlow and gRPC are imported only when it serves.
"""

from __future__ import annotations

import argparse

from kerassave_callbacks.server import config as config_lib


class ServeError(Exception):
    """Bad usage of `serve`: the command line exits 2 with this message."""


def add_parser(commands) -> argparse.ArgumentParser:
    """Adds `serve` with its flags to the subcommands `commands`."""
    serve = commands.add_parser(
        "serve",
        help="serve export directories with TF Serving's REST and gRPC APIs",
        description="Serves export directories with TF Serving's REST and gRPC "
        "APIs, following them as TF Serving does (for development and CI; "
        "production uses TF Serving).",
    )
    serve.add_argument("export_dir", nargs="?", default="", help="the export dir")
    serve.add_argument("--model_name", default="default", help="its name in requests")
    serve.add_argument("--model_config_file", default="", help="a ModelServerConfig")
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind")
    serve.add_argument("--rest_api_port", type=int, default=8501, help="0: any free")
    serve.add_argument("--port", type=int, default=8500, help="gRPC; 0: any free")
    serve.add_argument(
        "--version_policy", choices=config_lib.POLICIES, default="latest"
    )
    serve.add_argument("--num_versions", type=int, default=1, help="for latest")
    serve.add_argument("--versions", default="", help="for specific: V1,V2,...")
    for name, kind, default, text in (
        ("file_system_poll_wait_seconds", float, 1.0, "the wait between polls"),
        ("model_config_file_poll_wait_seconds", float, 0.0, "0: read it once"),
        ("max_num_load_retries", int, 5, "loads of a failing version retried"),
        ("load_retry_interval_micros", int, 60_000_000, "the wait between them"),
        ("rest_api_num_threads", int, 8, "threads answering REST"),
        ("grpc_max_threads", int, 8, "threads answering gRPC"),
        ("max_request_bytes", int, 64 << 20, "the largest body or message"),
    ):
        serve.add_argument(f"--{name}", type=kind, default=default, help=text)
    return serve


def serve(args: argparse.Namespace) -> None:
    """Serves what `args` name until Ctrl-C or SIGTERM, after printing one
    line with both addresses.

    Raises:
      ServeError: bad flags, a config file that does not parse, a taken
        port, or tensorflow-serving-api missing.
    """
    import signal
    import threading

    from absl import logging

    app = _app()
    configs = _configs(args)
    logging.set_verbosity(logging.INFO)  # each load and unload, as TF Serving logs
    try:
        serving = app.Serving(configs, _options(args, app), args.model_config_file)
    except (OSError, TypeError, ValueError) as e:
        raise ServeError(f"cannot serve: {e}") from e
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    names = ", ".join(c.name for c in configs)
    print(
        f"kerassave serve: {names} on REST http://{args.host}:{serving.rest_port} "
        f"and gRPC {args.host}:{serving.grpc_port}",
        flush=True,
    )
    with serving:
        stop.wait()


def _app():
    try:
        from kerassave_callbacks.server import app
    except ImportError as e:
        raise ServeError(
            f"serve needs tensorflow-serving-api and grpcio ({e}): pip install "
            "'tensorflow-serving-api==<your TensorFlow's major.minor>.*'"
        ) from e
    return app


def _configs(args) -> list[config_lib.ModelConfig]:
    """The models: a config file's, or EXPORT_DIR with the policy flags."""
    try:
        if args.model_config_file:
            if args.export_dir:
                raise ValueError("give EXPORT_DIR or --model_config_file, not both")
            return config_lib.read_config_file(args.model_config_file)
        if not args.export_dir:
            raise ValueError("give EXPORT_DIR or --model_config_file")
        versions = tuple(int(v) for v in args.versions.split(",") if v.strip())
        policy = config_lib.VersionPolicy(
            args.version_policy, num_versions=args.num_versions, versions=versions
        )
        return [config_lib.ModelConfig(args.model_name, args.export_dir, policy)]
    except (TypeError, ValueError, OSError) as e:
        raise ServeError(str(e)) from e


def _options(args, app):
    return app.ServeOptions(
        host=args.host,
        rest_api_port=args.rest_api_port,
        port=args.port,
        poll_seconds=args.file_system_poll_wait_seconds,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
        max_load_retries=args.max_num_load_retries,
        load_retry_seconds=args.load_retry_interval_micros / 1e6,
        rest_threads=args.rest_api_num_threads,
        grpc_threads=args.grpc_max_threads,
        max_request_bytes=args.max_request_bytes,
    )
