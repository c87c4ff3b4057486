"""Names of versions and temporaries: pure functions, tested as tables."""

from __future__ import annotations

import os
import subprocess

import pytest

from kerassave_callbacks import _files, layout


@pytest.mark.parametrize(
    "name, expected",
    [
        ("1700000000", 1700000000),
        ("1700000000/", 1700000000),
        ("0", 0),
        ("0123", None),
        ("12abc", None),
        ("-5", None),
        ("١٢٣", None),  # Arabic-Indic digits: isdigit() but not a TF Serving version.
        ("temp-1700000000-host-1-0123abcd", None),
        ("temp-1700000000-host-0123abcd-1-0123abcd", None),
        ("", None),
    ],
)
def test_version_name(name, expected):
    assert layout.version_name(name) == expected


def test_temp_name_round_trips_and_is_never_a_version():
    name = layout.temp_name(1700000000.7)
    created, host, namespace, pid = layout.parse_temp_name(name)
    assert (created, pid) == (1700000000, os.getpid())
    assert host and "-" not in host  # Hyphens separate the fields.
    assert namespace == layout.temp_name(0).split("-")[3]  # This process's.
    assert layout.version_name(name) is None
    assert name.startswith(layout.TEMP_PREFIX)


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def _with(name: str, *, pid: int, namespace: str | None = None) -> str:
    created, host, own, _ = layout.parse_temp_name(name)
    return f"temp-{created}-{host}-{namespace or own}-{pid}-0123abcd"


NOW = 1_700_000_000
LIVENESS = {
    # (whose, age in seconds) -> abandoned?
    "this_process_fresh": ("live", 0, False),
    "dead_pid_this_namespace": ("dead", 0, True),
    "dead_pid_other_namespace_fresh": ("other_namespace", 0, False),
    "dead_pid_other_namespace_59_minutes": ("other_namespace", 3540, False),
    "dead_pid_other_namespace_stale": ("other_namespace", 3601, True),
    "earlier_release_name_fresh": ("old_name", 0, False),
    "earlier_release_name_stale": ("old_name", 3601, True),
}


@pytest.mark.parametrize("whose,age,abandoned", LIVENESS.values(), ids=LIVENESS)
def test_a_pid_is_checked_only_in_the_writers_own_pid_namespace(whose, age, abandoned):
    name = layout.temp_name(NOW)
    if whose == "dead":
        name = _with(name, pid=_dead_pid())
    elif whose == "other_namespace":
        name = _with(name, pid=_dead_pid(), namespace="ffffffff")
    elif whose == "old_name":
        created, host, _, _ = layout.parse_temp_name(name)
        name = f"temp-{created}-{host}-{_dead_pid()}-0123abcd"
    assert layout.temp_is_abandoned(name, NOW + age) is abandoned


@pytest.mark.parametrize(
    "name", ["temp-notes", "temp-1-host-x-0123abcd", "tmp-1-host-2-0123abcd", "123"]
)
def test_other_names_are_not_temporaries(name):
    assert layout.parse_temp_name(name) is None
    assert not layout.temp_is_abandoned(name, now=1e12)


@pytest.mark.parametrize(
    "path, atomic, local",
    [
        ("/models/x", True, True),
        ("relative/x", True, True),
        ("file:///models/x", True, True),
        ("hdfs://nn/models", True, False),
        ("gs://bucket/models", False, False),
        ("s3://bucket/models", False, False),
        ("ram://models", False, False),
    ],
)
def test_commit_strategy_by_scheme(path, atomic, local):
    assert _files.renames_atomically(path) is atomic
    assert _files.is_local(path) is local


@pytest.mark.parametrize(
    "path, expected",
    [
        ("ram://a/b", "ram://a"),
        ("ram://a", None),
        ("ram://", None),
        ("gs://bucket/x/", "gs://bucket"),
        ("/tmp/x", "/tmp"),
        ("/", None),
        ("rel", "."),
        ("a/b", "a"),
        ("file:///tmp/x", "file:///tmp"),
    ],
)
def test_parent_of_a_path_is_none_at_a_root(path, expected):
    assert _files.parent(path) == expected
