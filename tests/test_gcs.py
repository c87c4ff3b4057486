"""Exports to `gs://` through TensorFlow's own GCS file system, against a
GCS emulator reached as Google is (tests/gcs_namespace.sh: a private network
namespace where Google's host names lead to the emulator behind TLS).

One run of tests/gcs_worker.py does the work (fit with a poller following
the bucket as TF Serving does, loads, retention and its grace period,
`kerassave list/verify/prune`); the tests below read its report. Select
them with `-m gcs`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACE = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child"]

pytestmark = pytest.mark.gcs


def _namespaces_permitted() -> str | None:
    """Why a private network namespace cannot be made here, or None."""
    try:
        done = subprocess.run(
            [*NAMESPACE, "--mount-proc", "true"], capture_output=True, text=True
        )
    except FileNotFoundError:
        return "unshare(1) is not installed"
    if done.returncode != 0:
        return f"unshare is not permitted here: {done.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    why = _namespaces_permitted()
    if why:
        pytest.skip(f"the GCS emulator needs a network namespace: {why}")
    work = str(tmp_path_factory.mktemp("gcs"))
    done = subprocess.run(
        [
            *NAMESPACE,
            "--mount-proc",
            os.path.join(HERE, "gcs_namespace.sh"),
            work,
            sys.executable,
            os.path.join(HERE, "gcs_worker.py"),
            work,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fit_exports_to_the_bucket_and_a_following_server_never_fails(report):
    fit = report["fit"]
    served = fit["served"]
    assert served["failed"] == []
    # No listing ever showed a graph file without the files it needs.
    assert served["incomplete"] == []
    # The server moved with the versions (keep=1: only the newest stays).
    assert len(set(served["loaded"])) >= 2
    assert fit["versions"] == fit["listed"] == [served["loaded"][-1]]
    assert fit["bucket"] == [f"{fit['versions'][0]}/"]


def test_a_version_in_the_bucket_loads_as_the_model_it_was(report):
    fit = report["fit"]
    assert fit["tf2_diff"] == 0.0
    assert fit["restored_diff"] == 0.0
    assert fit["restored_optimizer_steps"] == fit["optimizer_steps"]


def test_retention_waits_out_the_grace_period_in_the_bucket(report):
    tools = report["tools"]
    assert tools["during_grace"] == [tools["first"], tools["second"]]
    assert tools["after_grace"] == [tools["second"]]


def test_kerassave_lists_verifies_and_prunes_the_bucket(report):
    tools = report["tools"]
    code, rows = tools["list"]
    assert code == 0 and [r["version"] for r in rows] == tools["two"]
    assert [r["metrics"] for r in rows] == [{"loss": 0.4}, {"loss": 0.3}]
    code, rows = tools["verify"]
    assert code == 0 and [(r["version"], r["ok"]) for r in rows] == [
        (v, True) for v in tools["two"]
    ]
    code, pruned = tools["prune"]
    assert code == 0 and pruned["deleted"] == tools["two"][:1]
    assert tools["after_prune"] == tools["two"][1:]


def test_a_tree_in_the_bucket_lists_its_files_and_no_folder(report):
    assert report["listing"]["listed"] == report["listing"]["written"]
