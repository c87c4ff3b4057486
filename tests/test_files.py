"""Names of versions and temporaries: pure functions, tested as tables."""

from __future__ import annotations

import os
import subprocess

import pytest

from kerassave_callbacks import _files, _fs, layout


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
        ("temp-1700000000-host-0123abcd-1-4567-0123abcd", None),
        ("", None),
    ],
)
def test_version_name(name, expected):
    assert layout.version_name(name) == expected


def test_temp_name_round_trips_and_is_never_a_version():
    name = layout.temp_name(1700000000.7)
    temp = layout.parse_temp_name(name)
    assert (temp.created, temp.pid) == (1700000000, os.getpid())
    assert temp.host and "-" not in temp.host  # Hyphens separate the fields.
    assert temp.namespace == layout.temp_name(0).split("-")[3]  # This process's.
    assert temp.started == layout._started() and temp.started > 0
    assert layout.version_name(name) is None
    assert name.startswith(layout.TEMP_PREFIX)


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def _with(name: str, *, pid=None, namespace=None, started=None) -> str:
    t = layout.parse_temp_name(name)
    return (
        f"temp-{t.created}-{t.host}-{namespace or t.namespace}-{pid or t.pid}-"
        f"{t.started if started is None else started}-0123abcd"
    )


NOW = 1_700_000_000
LIVENESS = {
    # (whose, age in seconds) -> abandoned?
    "this_process_fresh": ("live", 0, False),
    "this_process_a_day_old": ("live", 86400, False),
    "dead_pid_this_namespace": ("dead", 0, True),
    # A PID used again (PID 1 of a restarted container): it runs, but
    # started at another time than the writer.
    "reused_pid_this_namespace": ("reused", 0, True),
    "dead_pid_other_namespace_fresh": ("other_namespace", 0, False),
    "dead_pid_other_namespace_59_minutes": ("other_namespace", 3540, False),
    "dead_pid_other_namespace_stale": ("other_namespace", 3601, True),
    # Names without the start time: a running PID counts for an hour.
    "no_start_time_live_pid_fresh": ("no_start_time", 0, False),
    "no_start_time_live_pid_stale": ("no_start_time", 3601, True),
    "earliest_release_name_fresh": ("old_name", 0, False),
    "earliest_release_name_stale": ("old_name", 3601, True),
}


@pytest.mark.parametrize("whose,age,abandoned", LIVENESS.values(), ids=LIVENESS)
def test_a_writer_is_judged_by_pid_and_start_time_only_in_its_own_namespace(
    whose, age, abandoned
):
    name = layout.temp_name(NOW)
    if whose == "dead":
        name = _with(name, pid=_dead_pid())
    elif whose == "reused":
        name = _with(name, started=layout._started() - 1)
    elif whose == "other_namespace":
        name = _with(name, pid=_dead_pid(), namespace="ffffffff")
    elif whose == "no_start_time":
        t = layout.parse_temp_name(name)
        name = f"temp-{t.created}-{t.host}-{t.namespace}-{t.pid}-0123abcd"
    elif whose == "old_name":
        t = layout.parse_temp_name(name)
        name = f"temp-{t.created}-{t.host}-{_dead_pid()}-0123abcd"
    assert layout.temp_is_abandoned(name, NOW + age) is abandoned
    # The same rule for a file written aside inside a version.
    side = f"export_info.json.{name}"
    assert layout.temp_is_abandoned(side, NOW + age) is abandoned


@pytest.mark.parametrize(
    "name",
    [
        "temp-notes",
        "temp-1-host-x-0123abcd",
        "tmp-1-host-2-0123abcd",
        "123",
        "export_info.json",
        "notes.temp-mine",
    ],
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


@pytest.mark.parametrize(
    "path, facts",
    [
        ("/models/x", _fs.Facts(atomic_rename=True, links=True, fsync=True)),
        ("file:///models/x", _fs.Facts(atomic_rename=True, links=True, fsync=True)),
        ("hdfs://nn/models", _fs.Facts(atomic_rename=True)),
        ("gs://bucket/models", _fs.Facts(atomic_rename=False, one_listing=True)),
        ("ram://models", _fs.Facts(atomic_rename=False)),
        ("abfs://container/models", _fs.Facts(atomic_rename=False)),
    ],
    ids=["local", "file", "hdfs", "gcs", "ram", "unknown_is_an_object_store"],
)
def test_each_file_system_facts_are_one_entry(path, facts):
    assert _fs.facts(path) == facts


def test_a_move_that_meets_another_writers_file_puts_everything_back():
    # On an object store (ram:// here) a version is moved file by file; if
    # another writer took the version meanwhile, the staged tree must be
    # whole again for the retry under the next number, and theirs untouched.
    src, dst = "ram://move_back/temp-1", "ram://move_back/7"
    ours = {
        "export_info.json": b"{}",
        "assets/vocab.txt": b"a\nb",
        "variables/variables.index": b"ours",
        "saved_model.pb": b"graph",
    }
    _files.write_tree(src, ours)
    _files.write_tree(dst, {"variables/variables.index": b"theirs"})

    with pytest.raises(FileExistsError):
        _files.move_graph_last(src, dst)

    assert {f: _fs.read_bytes(f"{src}/{f}") for f in _fs.files(src)} == ours
    assert _fs.files(dst) == ["variables/variables.index"]
    assert _fs.read_bytes(f"{dst}/variables/variables.index") == b"theirs"

    # Once the way is clear the move completes and nothing of ours is left.
    _files.remove_tree(dst)
    _files.move_graph_last(src, dst)
    assert {f: _fs.read_bytes(f"{dst}/{f}") for f in _fs.files(dst)} == ours
    assert not _fs.exists(src)
