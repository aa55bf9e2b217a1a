"""What the bench scripts share: ports, child processes, CPU accounting, the
md5 yardstick and the results file. Imported by the scripts in this folder
(run as ``python bench/<script>.py``, so this folder is on ``sys.path``)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
              timeout: float = 120) -> None:
    """Wait until something listens on 127.0.0.1:``port``; stop the run if
    ``proc`` exits first or it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout}s; see {log}")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 40) -> None:
    """SIGTERM (the node drains and exits 0), SIGKILL if it takes too long."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_cpu(pid: int, task: int | None = None) -> float:
    """utime+stime of ``pid`` (or of its thread ``task``) in seconds (0 if gone)."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_env() -> dict[str, str]:
    """The node runs this checkout's code, not whatever the venv has installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def md5_rate(data: bytes | memoryview, chunk: int = 64 * 1024, passes: int = 3) -> float:
    """Bytes/s of one hashlib.md5 over ``data`` in ``chunk`` updates (median of
    ``passes``): the work the node must do on every byte, for scale."""
    view, rates = memoryview(data), []
    for _ in range(passes):
        h = hashlib.md5()
        t0 = time.perf_counter()
        for off in range(0, len(view), chunk):
            h.update(view[off : off + chunk])
        rates.append(len(view) / (time.perf_counter() - t0))
    return statistics.median(rates)


def write_results(directory: str | Path, prefix: str, report: dict[str, Any]) -> Path:
    """``<directory>/<prefix>-<time>.json``; returns its path."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = Path(directory) / f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
