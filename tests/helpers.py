"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tilegraph(*args, cwd=None, timeout=240, env=None):
    """Run the ``tilegraph`` command line in a subprocess, as a user would."""
    env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "tilegraph.pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    """The JSON object on the last line of ``stdout`` (the ``--json`` contract)."""
    return json.loads(stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Wait until something listens on ``port`` of loopback; ``proc`` must stay alive."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the cluster process exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a process the way a user would (SIGTERM), killing it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
