"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

import json
import os
import subprocess
import sys
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
