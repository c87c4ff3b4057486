"""In multi-worker training only the chief writes versions and events."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_only_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    script = os.path.join(os.path.dirname(__file__), "multi_worker.py")
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config))
        args = [str(tmp_path / f"exports_{index}"), str(tmp_path / f"logs_{index}")]
        workers.append(
            subprocess.Popen(
                [sys.executable, script, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            worker.kill()

    assert results == [
        {"chief": True, "versions": 1, "logs": True},
        {"chief": False, "versions": 0, "logs": False},
    ]
