"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


def run_cli(*argv) -> tuple[int, str, str]:
    """``tilegraph ARGV`` in this process: ``(exit status, stdout, stderr)``."""
    import contextlib
    import io

    from tilegraph.pipelines import cli

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli.main(list(argv))
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


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


#: A user's own PDE module (``kind=custom``): variable coefficients on the box
#: ``[0, 2] x [-1, 1] (x [0, 1])`` with the exact solution
#: ``u = exp(x / 2) sin(y) (1 + z / 2)``; ``f`` is ``L u`` worked out by hand.
USER_PDE = """
import numpy as np


class Manufactured:
    def __init__(self, d=2):
        self.d = d

    def alpha_k(self, k, c):
        x, y = c[0], c[1]
        return (1.0 + 0.5 * x**2, 1.5 + 0.5 * np.sin(x * y), 1.0 + 0.25 * c[-1] ** 2)[k]

    def beta_k(self, k, c):
        x, y = c[0], c[1]
        return (1.0 - 0.5 * y, 0.5 * x, 0.3 + 0 * x)[k]

    def _z(self, c):
        return 1.0 + 0.5 * c[2] if self.d == 3 else 1.0

    def exact(self, c):
        return np.exp(0.5 * c[0]) * np.sin(c[1]) * self._z(c)

    def rhs(self, c):
        u = self.exact(c)
        u_y = np.exp(0.5 * c[0]) * np.cos(c[1]) * self._z(c)
        f = -0.25 * self.alpha_k(0, c) * u + self.alpha_k(1, c) * u
        f = f + 0.5 * self.beta_k(0, c) * u + self.beta_k(1, c) * u_y
        if self.d == 3:
            f = f + self.beta_k(2, c) * 0.5 * np.exp(0.5 * c[0]) * np.sin(c[1])
        return f

    def boundary(self, c):
        return self.exact(c)


def make(d=2):
    return Manufactured(d)
"""

#: ``problem.domain`` of :data:`USER_PDE` per dimension.
USER_PDE_DOMAIN = {2: [[0.0, 2.0], [-1.0, 1.0]], 3: [[0.0, 2.0], [-1.0, 1.0], [0.0, 1.0]]}


#: Metrics and variables that measure time, the machine or this process's effort, not
#: the answer (matched as suffixes or substrings of the name).
_UNSTABLE = ("_s", "worker_restarts", "workers", "passes", "speedup", "s_per_iter", "wall")


def _unstable(name: str) -> bool:
    return name.endswith(_UNSTABLE) or any(u in name for u in _UNSTABLE[4:])


def assert_same_answer(run, ref, datasets) -> int:
    """Same status, answer metrics and answer variables; returns variables compared."""
    assert run.status == "complete"
    a = {k: v for k, v in run.metrics.items() if not _unstable(k)}
    b = {k: v for k, v in ref.metrics.items() if not _unstable(k)}
    assert a.keys() == b.keys() and a
    for key in a:
        same = a[key] == b[key] or (
            isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key])
        )
        assert same, f"{key} differs: {a[key]!r} vs {b[key]!r}"
    compared = 0
    for group in datasets:
        ra, rb = run.open_dataset(group), ref.open_dataset(group)
        assert set(ra.data_vars) == set(rb.data_vars)
        for var in ra.data_vars:  # a missing chunk would read as fill value: not equal
            if not _unstable(var):
                np.testing.assert_array_equal(ra[var].values, rb[var].values, err_msg=var)
                compared += 1
    return compared
