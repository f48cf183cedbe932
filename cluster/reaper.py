"""A watchdog that cleans up after a driver killed without a chance to (SIGKILL).

It stops the processes of a local Ray instance, and cancels a driver's batch jobs.

``ray.init`` starts the GCS server, the raylet and two agents as children of the driver.
The GCS server and raylet die with a killed driver, but the agents then try to report the
raylet's death to the dead GCS for a fixed 60 s (``publish_error_to_driver``) before
they exit. This small process, started next to them, waits for the driver to go and
then kills every process it was told about that still runs (checked by creation time, so
a reused pid is never hit). Batch jobs submitted through dask-jobqueue wait in the queue
(or hold their nodes for the workers' ``--death-timeout``) after a SIGKILLed driver; the
watchdog then runs the scheduler's cancel command for the jobs' unique name. A normal
``close()`` stops it first.

Run as ``python -m tilegraph.cluster.reaper DRIVER_PID [PID:CREATE_TIME ...] [-- CMD ...]``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["start_reaper"]

#: Seconds between checks that the driver is alive.
POLL_S = 0.5


def start_reaper(pids: list[int], on_death: list[str] | None = None) -> subprocess.Popen | None:
    """Watch this process; when it dies, kill ``pids`` (those still alive and unchanged)
    and run the command ``on_death`` (a batch scheduler's cancel command).

    Returns
    -------
    subprocess.Popen or None
        The watchdog (terminate it on a normal shutdown); None when there is nothing to do.
    """
    import psutil

    targets = []
    for pid in pids:
        try:
            targets.append(f"{pid}:{psutil.Process(pid).create_time():.6f}")
        except psutil.Error:
            continue
    if not targets and not on_death:
        return None
    command = ["--", *on_death] if on_death else []
    return subprocess.Popen(
        [sys.executable, "-m", "tilegraph.cluster.reaper", str(os.getpid()), *targets, *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no Ctrl-C from the terminal, no job-control signals
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def main(argv: list[str]) -> int:
    import psutil

    driver = int(argv[0])
    rest = argv[1:]
    command = rest[rest.index("--") + 1 :] if "--" in rest else []
    rest = rest[: rest.index("--")] if "--" in rest else rest
    targets = [(int(p), float(t)) for p, t in (a.split(":") for a in rest)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a normal close
    while _alive(driver):
        time.sleep(POLL_S)
    for pid, created in targets:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                proc.kill()
        except psutil.Error:
            continue
    if command:
        try:
            subprocess.run(command, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError):
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    raise SystemExit(main(sys.argv[1:]))
