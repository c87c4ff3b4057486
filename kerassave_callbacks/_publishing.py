"""The publish gate's part of a versioned export: what the gate needs,
taken in the caller's thread when the variables are snapshot
(`expectation`), and its check of the staged tree in the writer's thread
(`check`), which keeps a version that fails as `rejected-<version>` and
raises. The checks themselves are `core.validation`'s.
"""

from __future__ import annotations

import dataclasses

from absl import logging

from kerassave_callbacks import _files, _rejected, layout
from kerassave_callbacks.core import validation
from kerassave_callbacks.records import ExportRejectedError


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What the gate compares a staged version with.

    Attributes:
      requests: the validation feeds of each signature (`validation.requests`).
      answers: the model's own answers to them, taken at the snapshot.
      model: the exported model (for messages).
      metric_problem: the metric gate's verdict against the best version on
        disk (None: it passes).
    """

    requests: dict
    answers: dict
    model: object
    metric_problem: str | None


def expectation(
    cache, gate, monitor, metrics: dict, best: float | None, draft: dict
) -> Expectation | None:
    """What the gate needs, taken now (None when the gate is off): the
    rows, the model's answers and the metric gate's verdict. `draft` is
    the export info that errors report."""
    taken = cache.expectation(draft)
    if taken is None:
        return None
    requests, answers = taken
    problem = gate.metric_problem(monitor, metrics, best)
    return Expectation(requests, answers, cache.graphs.model, problem)


def check(
    staged: _files.Staging,
    export_dir: str,
    info: layout.ExportInfo,
    expected: Expectation,
    options,
    now: float,
) -> None:
    """Runs the publish gate on the staged tree; a version that fails is
    kept as `rejected-<version>` (its export info and `rejection.json`
    beside it) and raises.

    Raises:
      ExportRejectedError: the version failed the gate.
    """
    where = options.layout
    problems = [expected.metric_problem] if expected.metric_problem else []
    problems += validation.gate_problems(
        where.root(staged.path),
        options.validate,
        expected.requests,
        expected.answers,
        expected.model,
    )
    if not problems:
        return
    version = info.version
    _files.write_json(where.info_path(staged.path), info.to_json())
    reason = {"version": version, "rejected": now, "problems": problems}
    kept = _rejected.reject(
        staged,
        export_dir,
        version,
        layout.json_bytes(reason),
        options.validate.keep_rejected,
    )
    logging.warning("Version %d failed the publish gate: %s", version, problems)
    where_kept = f" It is kept at {kept} for a look." if kept else ""
    raise ExportRejectedError(
        f"Version {version} of {export_dir!r} failed the publish gate "
        f"and was not published: {'; '.join(problems)}.{where_kept}",
        info=info.to_json(),
        problems=problems,
        rejected=kept,
    )
