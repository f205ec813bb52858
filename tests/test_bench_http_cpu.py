"""The CPU-per-request benchmark's measuring parts: /proc readings, the paths, the listener."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest
from bench import http_cpu


def test_process_cpu_grows_with_work_and_is_zero_for_a_gone_process() -> None:
    before = http_cpu.process_cpu(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert http_cpu.process_cpu(os.getpid()) > before
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert http_cpu.process_cpu(child.pid) == 0.0


def test_tree_cpu_counts_the_children() -> None:
    busy = "sum(i * i for i in range(10_000_000)); print('done', flush=True); input()"
    child = subprocess.Popen(
        [sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "done"
        spent = http_cpu.process_cpu(child.pid)
        assert spent > 0.1
        assert http_cpu.tree_cpu(os.getpid()) >= http_cpu.process_cpu(os.getpid()) + spent
    finally:
        child.kill()
        child.wait()


def test_paths_are_never_seen_queries_of_both_routes() -> None:
    paths = http_cpu.paths_for(400, seed=2)
    queries = [parse_qs(urlsplit(p).query)["query"][0] for p in paths]
    assert len(set(queries)) == 400
    routes = {urlsplit(p).path for p in paths}
    assert routes == {"/comps", "/active"}
    # Another call is another set of queries: a rerun never hits what the last one fetched.
    again = {parse_qs(urlsplit(p).query)["query"][0] for p in http_cpu.paths_for(400, seed=2)}
    assert not again & set(queries)


def test_listener_pid_names_the_process_listening_on_a_port() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert http_cpu.listener_pid(listening.getsockname()[1]) == os.getpid()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(RuntimeError, match=str(port)):
        http_cpu.listener_pid(port)
