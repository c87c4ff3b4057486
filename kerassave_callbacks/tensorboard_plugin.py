"""The Exports dashboard: a TensorBoard plugin listing each run's exports.

Registered through the `tensorboard_plugins` entry point, so a plain
`tensorboard --logdir` shows an "Exports" tab for runs with export events
(the `export/record` summaries that `ExportEvents` writes). The frontend is
one ES module (`tensorboard_static/index.js`, no build step); the backend
serves it and two JSON routes:

- `/runs`: the runs with export records;
- `/exports?run=RUN`: one row per export, oldest first: version, time,
  epoch, step, monitored metric, duration, size, status (`on disk`,
  `removed` by retention, or `failed` with its error), and which row TF
  Serving serves (the newest version on disk) and which is the best by the
  monitor. When the export directory recorded in the events is readable,
  the on-disk status is read from it live; otherwise from the events.
"""

from __future__ import annotations

import json
import os

from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from kerassave_callbacks import events, fields, options
from kerassave_callbacks import export_dir as export_dir_lib

# Record statuses of exports that left no version on disk.
_NOT_COMMITTED = ("failed", "rejected")
_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tensorboard_static")


def export_rows(records: list[dict]) -> list[dict]:
    """Dashboard rows from a run's export records (oldest first).

    Each committed record gets `status` "on disk" or "removed": read from
    its export directory when that is readable, else from the `removed`
    lists of later records. The newest version on disk is marked
    `serving`, the best by the monitor `best`. Failed exports and versions
    the publish gate rejected keep their status and reason (`error`).
    """
    rows = [dict(r) for r in records]
    on_disk: dict[str, set[int] | None] = {}
    removed = {v for r in rows for v in r.get("removed") or []}
    for row in rows:
        if row.get("status") in _NOT_COMMITTED:
            continue
        directory = row.get("export_dir")
        if directory not in on_disk:
            view = export_dir_lib.ExportDir(directory) if directory else None
            on_disk[directory] = (
                set(view.versions()) if view and view.exists() else None
            )
        live = on_disk[directory]
        present = (
            row["version"] in live
            if live is not None
            else (row["version"] not in removed)
        )
        row["status"] = "on disk" if present else "removed"
        row["status_source"] = "export_dir" if live is not None else "events"
        row["monitor_value"] = (row.get("metrics") or {}).get(row.get("monitor"))
    kept = [r for r in rows if r.get("status") == "on disk"]
    if kept:
        max(kept, key=lambda r: r["version"])["serving"] = True
    monitored = [r for r in kept if r.get("monitor")]
    if monitored:
        monitor = options.Monitor(
            monitored[-1]["monitor"], monitored[-1].get("mode") or "auto"
        )
        best = monitor.ranked(
            (r["version"], monitor.value(r.get("metrics"))) for r in monitored
        )
        for r in monitored:
            if best and r["version"] == best[0]:
                r["best"] = True
    return rows


def _parse(datum, run: str) -> dict:
    """One export record, each field checked (`events.RECORD_FIELDS`: a bad
    field reads as missing, with a warning). One that cannot be read, or a
    committed one naming no version, becomes a failed row saying so, and
    never hides the other records or runs."""
    source = f"The export record of run {run!r} at step {datum.step}"
    try:
        record = json.loads(datum.numpy.item().decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        record = fields.read(record, events.RECORD_FIELDS, source)
        if record["status"] not in _NOT_COMMITTED and record["version"] is None:
            raise ValueError("it names no version")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        record = {
            "status": "failed",
            "step": datum.step,
            "error": f"This export record could not be read: {e}",
        }
    record["wall_time"] = datum.wall_time
    return record


class ExportsPlugin(base_plugin.TBPlugin):
    """The "Exports" dashboard.

    Example:

        # setup.py
        entry_points={"tensorboard_plugins": [
            "kerassave_exports = kerassave_callbacks.tensorboard_plugin:ExportsPlugin"
        ]}
    """

    plugin_name = events.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider = context.data_provider

    def get_plugin_apps(self) -> dict:
        return {
            "/index.js": self._serve_js,
            "/runs": self._serve_runs,
            "/exports": self._serve_exports,
        }

    def is_active(self) -> bool:
        return False  # Active through data_plugin_names: runs with records.

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Exports"
        )

    def _records(self, environ, run: str | None = None) -> dict[str, list[dict]]:
        ctx = plugin_util.context(environ)
        experiment = plugin_util.experiment_id(environ)
        data = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=events.PLUGIN_NAME,
            downsample=10_000,
            run_tag_filter=provider.RunTagFilter(
                runs=[run] if run is not None else None, tags=[events.RECORD]
            ),
        )
        result = {}
        for run_name, tags in data.items():
            result[run_name] = [
                _parse(d, run_name) for d in tags.get(events.RECORD, [])
            ]
        return result

    @wrappers.Request.application
    def _serve_js(self, request):
        with open(os.path.join(_STATIC, "index.js"), "rb") as f:
            return http_util.Respond(request, f.read(), "application/javascript")

    @wrappers.Request.application
    def _serve_runs(self, request):
        return http_util.Respond(
            request, sorted(self._records(request.environ)), "application/json"
        )

    @wrappers.Request.application
    def _serve_exports(self, request):
        run = request.args.get("run", "")
        records = self._records(request.environ, run).get(run, [])
        return http_util.Respond(request, export_rows(records), "application/json")
