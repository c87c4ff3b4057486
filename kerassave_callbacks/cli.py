"""`kerassave`: see, check and tidy an export directory from the shell.

    kerassave list EXPORT_DIR [--json] [--rejected]
    kerassave inspect PATH [--json]
    kerassave verify PATH [--json]
    kerassave prune EXPORT_DIR --keep N [--keep_best K --monitor NAME
                    --mode min|max|auto] [--keep_every_n_hours H]
                    [--grace_seconds S] [--dry_run] [--json]
    kerassave cleanup EXPORT_DIR [--json]
    kerassave serving_config EXPORT_DIR --name NAME [--policy latest|best|all]
                    [--monitor NAME --mode min|max|auto]
    kerassave serve [EXPORT_DIR] [--model_name M] [--rest_api_port 8501]
                    [--port 8500] [--version_policy latest|all|specific]
                    [--num_versions N] [--versions V,...]
                    [--model_config_file F] [--host 127.0.0.1]

Also `python -m kerassave_callbacks`. Flag names use underscores, as
`saved_model_cli` and `tensorflow_model_server` do. Exit codes: 0 done and
all good, 1 a check failed, 2 bad usage (an unknown flag, a path that is
not an export directory), with a one-line message naming the problem.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import posixpath
import sys
import time

from kerassave_callbacks import (
    _files,
    _leftovers,
    _startup,
    deleter,
    layout,
    options,
    retention,
)
from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks.server import command as serve_command

OK, FAILED, USAGE = 0, 1, 2
# The verbs that read graphs, and so import TensorFlow.
_READS_GRAPHS = ("inspect", "verify", "serving_config", "serve")


class UsageError(Exception):
    """Bad usage: exit 2 with this message."""


# Reading.


def _layout(args) -> layout.DirectoryLayout:
    """The directory layout `--saved_model_dir` names (TF Serving's when
    empty)."""
    try:
        return layout.DirectoryLayout(saved_model_dir=args.saved_model_dir)
    except ValueError as e:
        raise UsageError(f"--saved_model_dir: {e}") from e


def _export_dir(path: str, args) -> export_dir_lib.ExportDir:
    export_dir = export_dir_lib.ExportDir(path, _layout(args))
    if not export_dir.exists():
        raise UsageError(f"{path} is not a directory (expected an export directory)")
    if _files.has_graph(export_dir.path):
        raise UsageError(
            f"{path} is one SavedModel, not an export directory of versions"
        )
    return export_dir


def _deletable_export_dir(path: str, args) -> export_dir_lib.ExportDir:
    """`_export_dir` for the commands that delete: refuses every path the
    exporter refuses (empty, a file system root, a bucket root)."""
    try:
        _files.check_export_dir(path)
    except (TypeError, ValueError, PermissionError) as e:
        raise UsageError(str(e)) from e
    return _export_dir(path, args)


def _saved_model(path: str):
    from kerassave_callbacks.core import loader

    try:
        return loader.read_saved_model(path)
    except FileNotFoundError as e:
        versions = export_dir_lib.ExportDir(path).versions()
        hint = (
            f": it is an export directory; inspect one of its versions, e.g. "
            f"kerassave inspect {posixpath.join(path.rstrip('/'), str(versions[-1]))}"
            if versions
            else ""
        )
        raise UsageError(f"{path} holds no saved_model.pb{hint}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e


# The subcommands.


def cmd_list(args) -> tuple[int, object]:
    export_dir = _export_dir(args.export_dir, args)
    rows = export_dir.describe()
    rejected = export_dir.rejected()
    if args.json:
        extra = [r.to_json() for r in rejected] if args.rejected else []
        return OK, [r.to_json() for r in rows] + extra
    marks = _marks(rows, options.Monitor(args.monitor or None, args.mode))
    lines = [
        f"{'version':>12}  {'created':19}  {'epoch':>5}  {'step':>7}  "
        f"{'size':>10}  {'tags':16}  metrics"
    ]
    for r in rows:
        created = (
            datetime.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M:%S")
            if r.created is not None
            else "-"
        )
        metrics = " ".join(f"{k}={_short(v)}" for k, v in sorted(r.metrics.items()))
        lines.append(
            f"{r.version:>12}  {created:19}  {_dash(r.epoch):>5}  "
            f"{_dash(r.step):>7}  {format_size(r.size_bytes):>10}  "
            f"{' '.join(r.tags):16}  {metrics}{marks.get(r.version, '')}"
        )
    if rejected:
        lines.append("rejected by the publish gate (not served):")
    for r in rejected:
        lines.append(f"{r.version:>12}  {r.path}")
        lines += [f"{'':14}- {problem}" for problem in r.problems]
    return OK, "\n".join(lines)


def _marks(rows, monitor: options.Monitor) -> dict[int, str]:
    """What the dashboard marks too: the version TF Serving serves (the
    newest), the best by `monitor`, and links the user pinned."""
    marks = {r.version: [] for r in rows}
    if rows:
        marks[rows[-1].version].append("served")
    best = monitor.ranked(
        (r.version, monitor.value(r.metrics)) for r in rows if not r.pinned
    )
    if best:
        marks[best[0]].append(f"best {monitor.name}")
    for r in rows:
        if r.pinned:
            marks[r.version].append("pinned")
    return {v: f"  ({', '.join(m)})" for v, m in marks.items() if m}


def cmd_inspect(args) -> tuple[int, object]:
    from kerassave_callbacks import _verify

    saved = _saved_model(args.path)
    result = {
        "tags": _verify.signatures(saved),
        "export_info": export_dir_lib.info_json(args.path),
    }
    if args.json:
        return OK, result
    lines = []
    for tags, sigs in result["tags"].items():
        lines.append(f"tags: {tags}")
        for key, sig in sigs.items():
            lines.append(f"  signature {key!r} ({sig['method_name']})")
            for side in ("inputs", "outputs"):
                for name, t in sig[side].items():
                    lines.append(f"    {side[:-1]:6} {name}: {t['dtype']} {t['shape']}")
    library = result["export_info"].get("library") or {}
    for side, pairs in sorted((result["export_info"].get("names") or {}).items()):
        lines.append(f"{side} (Keras name -> signature key):")
        lines += [f"  {name} -> {key}" for name, key in pairs.items()]
    if result["export_info"]:
        lines.append(
            f"export info: {json.dumps(result['export_info'], sort_keys=True)}"
        )
    lines.append(
        "written by: "
        + (", ".join(f"{k} {v}" for k, v in sorted(library.items())) or "unknown")
    )
    return OK, "\n".join(lines)


def cmd_verify(args) -> tuple[int, object]:
    path = args.path.rstrip("/") or "/"
    versioned = not _files.has_graph(path)
    if not versioned:
        roots = {None: path}
    else:
        # Every integer-named entry: one without a graph file is what TF
        # Serving would pick as the newest, and fail to load.
        export_dir = _export_dir(path, args)
        roots = {v: export_dir.saved_model_path(v) for v in export_dir.all_versions()}
        if not roots:
            raise UsageError(f"{path} holds no versions")
    from kerassave_callbacks import _verify

    rows = []
    for version, root in roots.items():
        problems = _verify.verify_version(root, versioned=versioned)
        rows.append(
            {"version": version, "path": root, "ok": not problems, "problems": problems}
        )
    code = OK if all(r["ok"] for r in rows) else FAILED
    if args.json:
        return code, rows
    lines = []
    for r in rows:
        lines.append(f"{r['path']}: {'ok' if r['ok'] else 'FAILED'}")
        lines += [f"  - {p}" for p in r["problems"]]
    return code, "\n".join(lines)


def cmd_prune(args) -> tuple[int, object]:
    export_dir = _deletable_export_dir(args.export_dir, args)
    try:
        policy = options.RetentionPolicy(
            keep=args.keep or None,
            keep_best=args.keep_best or None,
            keep_every_n_hours=args.keep_every_n_hours or None,
            grace_seconds=args.grace_seconds,
        )
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e
    monitor = options.Monitor(args.monitor or None, args.mode)
    due = retention.plan(export_dir.for_retention(monitor.name), policy, monitor)
    doomed = list(due)
    now = time.time()
    ready = [v for v in doomed if due[v] <= now]
    if not args.dry_run:
        for version in ready:
            deleter.delete_version(export_dir.version_path(version), now)
    result = {
        "deleted": [] if args.dry_run else ready,
        "would_delete": ready,
        "in_grace": [v for v in doomed if v not in ready],
    }
    if args.json:
        return OK, result
    verb = "would delete" if args.dry_run else "deleted"
    lines = [f"{verb} {export_dir.version_path(v)}" for v in ready]
    lines += [
        f"kept {export_dir.version_path(v)} for {due[v] - now:.0f}s more "
        "(superseded less than --grace_seconds ago)"
        for v in result["in_grace"]
    ]
    return OK, "\n".join(lines or ["nothing to delete"])


def cmd_cleanup(args) -> tuple[int, object]:
    export_dir = _deletable_export_dir(args.export_dir, args)
    removed = _leftovers.remove_leftovers(
        export_dir.path, time.time(), export_dir.layout
    )
    if args.json:
        return OK, {"removed": removed}
    return OK, "\n".join([f"removed {p}" for p in removed] or ["nothing to remove"])


def cmd_serving_config(args) -> tuple[int, object]:
    export_dir = _export_dir(args.export_dir, args)
    try:
        from google.protobuf import json_format, text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as e:
        raise UsageError(
            "serving_config needs tensorflow-serving-api (TensorFlow 2.21 or "
            "newer): pip install 'tensorflow-serving-api==<your TensorFlow's "
            "major.minor>.*' (or pip install -e '.[serving]' in a checkout)"
        ) from e
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = args.name
    base = export_dir.path
    model.base_path = base if "://" in base else os.path.abspath(base)
    model.model_platform = "tensorflow"
    policy = model.model_version_policy
    if args.policy == "latest":
        policy.latest.num_versions = 1
    elif args.policy == "all":
        policy.all.SetInParent()
    else:
        monitor = options.Monitor(args.monitor, args.mode)
        known = export_dir.for_retention(monitor.name)
        best = retention.best_versions(known, 1, monitor)
        if not best:
            raise UsageError(f"no version in {base} records {args.monitor!r}")
        policy.specific.versions.extend(best)
    if args.json:
        return OK, json_format.MessageToDict(config, preserving_proto_field_name=True)
    return OK, text_format.MessageToString(config).rstrip("\n")


def cmd_serve(args) -> tuple[int, object]:
    """Serves until interrupted (Ctrl-C or SIGTERM): `server/command.py`."""
    from kerassave_callbacks.server import command

    try:
        command.serve(args)
    except command.ServeError as e:
        raise UsageError(str(e)) from e
    return OK, "stopped"


# Formatting.


def _dash(value) -> str:
    return "-" if value is None else str(value)


def _short(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_size(n: int) -> str:
    """Bytes as people read them (`145.3 KiB`), the dashboard's format too."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# The command line.


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _add_prune_arguments(prune: argparse.ArgumentParser) -> None:
    """The flags of `prune`: every field of a `RetentionPolicy`."""
    prune.add_argument("--keep", type=int, required=True, help="newest to keep; 0 all")
    prune.add_argument("--keep_best", type=int, default=0, help="best to keep too")
    prune.add_argument("--monitor", default="", help="metric for --keep_best")
    prune.add_argument("--mode", choices=options.MODES, default="auto")
    prune.add_argument(
        "--keep_every_n_hours",
        type=float,
        default=0,
        help="also one version per this many hours, as the exporter keeps; 0 off",
    )
    prune.add_argument("--dry_run", action="store_true", help="delete nothing")
    prune.add_argument(
        "--grace_seconds",
        type=float,
        default=options.DEFAULT_GRACE_SECONDS,
        help="keep a version until it was superseded this long; 0: off",
    )


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="kerassave", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name, fn, help_text, target):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(target)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if target == "export_dir" or name == "verify":
            p.add_argument(
                "--saved_model_dir",
                default="",
                help="where each version holds its SavedModel, as the exporter's "
                "DirectoryLayout (Triton: model.savedmodel); empty: the version "
                "itself, TF Serving's layout",
            )
        p.set_defaults(fn=fn)
        return p

    listing = add(
        "list", cmd_list, "one row per complete version, oldest first", "export_dir"
    )
    listing.add_argument("--monitor", default="", help="mark the best by it")
    listing.add_argument("--mode", choices=options.MODES, default="auto")
    listing.add_argument(
        "--rejected",
        action="store_true",
        help="with --json, add the rows of rejected-<version> copies",
    )
    add("inspect", cmd_inspect, "tags, signatures and export info", "path")
    add("verify", cmd_verify, "load every version as TF Serving does", "path")
    _add_prune_arguments(
        add("prune", cmd_prune, "apply the exporter's retention", "export_dir")
    )
    add("cleanup", cmd_cleanup, "remove what crashed exports left", "export_dir")
    config = add(
        "serving_config",
        cmd_serving_config,
        "print a TF Serving ModelServerConfig for the directory",
        "export_dir",
    )
    config.add_argument("--name", required=True, help="the model's name")
    config.add_argument("--policy", choices=("latest", "best", "all"), default="latest")
    config.add_argument("--monitor", default="", help="metric for --policy=best")
    config.add_argument("--mode", choices=options.MODES, default="auto")
    serve_command.add_parser(sub).set_defaults(fn=cmd_serve)
    return top


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    Example:

        main(["list", "/models/digits", "--json"])
    """
    try:
        args = parser().parse_args(argv)
        _check_flags(args)
        if args.command in _READS_GRAPHS:
            _startup.import_tensorflow()
        code, result = args.fn(args)
    except UsageError as e:
        print(f"kerassave: error: {e}", file=sys.stderr)
        return USAGE
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return code


def _check_flags(args) -> None:
    """Raises UsageError for what the flags alone get wrong, before
    TensorFlow is imported or anything is read."""
    for name in ("keep", "keep_best", "keep_every_n_hours", "grace_seconds"):
        if getattr(args, name, 0) < 0:
            raise UsageError(f"--{name} must be >= 0")
    ranks = {
        "prune": ("--keep_best", getattr(args, "keep_best", 0)),
        "serving_config": ("--policy=best", getattr(args, "policy", "") == "best"),
    }
    flag, wanted = ranks.get(args.command, ("", False))
    if wanted and not args.monitor:
        raise UsageError(f"{flag} needs --monitor, the metric to rank by")


def run() -> None:
    """The console script."""
    sys.exit(main())
