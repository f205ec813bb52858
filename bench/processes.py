"""Worker processes released together: the multi-process benchmarks' one harness.

Each worker runs ``python -m MODULE JSON``, prints ``ready`` once its store is open, reads
one shared start moment from stdin and prints its report as the last line of stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_together(module: str, payloads: list[dict[str, Any]], timeout: float) -> list[Any]:
    """Start one worker per payload, release them at one moment, return their reports.

    A worker that fails, or the whole run going past ``timeout`` seconds, raises with the
    worker's stderr; no worker outlives the call.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(payload)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for payload in payloads
    ]
    watchdog = threading.Timer(timeout, lambda: [p.kill() for p in procs])
    watchdog.start()
    reports = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{module} worker failed:\n{proc.communicate()[1][-2000:]}")
        start_at = time.time() + 0.5
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{module} worker failed:\n{err[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports
