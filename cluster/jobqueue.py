"""Batch schedulers (``slurm``, ``pbs``, ``sge``, ``lsf``) through dask-jobqueue.

A *profile* file says how jobs are asked for on a site: one YAML mapping per scheduler
kind, e.g.::

    slurm:
      queue: compute              # partition
      account: proj123
      walltime: "02:00:00"
      cores: 16                   # per job
      memory: 64GiB               # per job
      processes: 4                # Dask workers per job (threads = cores / processes)
      jobs: 2                     # default number of jobs (``--cluster slurm:JOBS`` wins)
      job_extra_directives: ["--gres=gpu:1"]
      job_script_prologue:        # shell lines run before the workers start
        - module load python/3.11
        - source ~/venvs/tilegraph/bin/activate
      log_directory: ~/tilegraph-logs
      wait_timeout: 900           # seconds to wait for the first worker

The file is the one given (``--cluster-profile``), else ``$TILEGRAPH_JOBQUEUE_PROFILE``,
else ``./tilegraph-jobqueue.yaml``, else ``~/.config/tilegraph/jobqueue.yaml``; with
none, the defaults below apply.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .specs import HPC_KINDS, Spec, SpecError

__all__ = ["BatchProfile", "ProfileError", "find_profile", "job_script", "load_profile"]

PROFILE_ENV = "TILEGRAPH_JOBQUEUE_PROFILE"
DEFAULT_PATHS = ("./tilegraph-jobqueue.yaml", "~/.config/tilegraph/jobqueue.yaml")

_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$")

#: dask-jobqueue cluster class per kind, and its name for the account to charge.
_CLASSES = {
    "slurm": ("SLURMCluster", "account"),
    "pbs": ("PBSCluster", "account"),
    "sge": ("SGECluster", "project"),
    "lsf": ("LSFCluster", "project"),
}


class ProfileError(SpecError):
    """A profile file that is missing, not YAML, or has a bad field (one line)."""


class BatchProfile(BaseModel):
    """How to ask a batch scheduler for Dask workers (per job)."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, description="queue / partition")
    account: str | None = Field(default=None, description="account or project to charge")
    walltime: str = Field(default="01:00:00", description="[D-]HH:MM[:SS] per job")
    cores: int = Field(default=1, ge=1, description="cores per job")
    memory: str = Field(default="4GiB", description="memory per job, e.g. 64GiB")
    processes: int | None = Field(default=None, ge=1, description="Dask workers per job")
    jobs: int = Field(default=1, ge=1, description="jobs to start")
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    interface: str | None = Field(default=None, description="network interface, e.g. ib0")
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = Field(default=None, description="python on the compute nodes")
    wait_timeout: float = Field(default=600.0, gt=0, description="seconds for a first worker")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            # YAML reads an unquoted 12:00:00 as the sexagesimal integer 43200 (seconds)
            h, rem = divmod(v, 3600)
            return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"
        if not isinstance(v, str) or not _WALLTIME.match(v):
            raise ValueError(f"expected [D-]HH:MM[:SS] (quote it in YAML), got {v!r}")
        if _seconds(v) <= 0:
            raise ValueError(f"must be longer than zero, got {v!r}")
        return v

    @field_validator("queue", "account", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _processes_fit(self) -> BatchProfile:
        if self.processes is not None and self.processes > self.cores:
            raise ValueError(
                f"processes ({self.processes}) must not exceed cores ({self.cores}): each "
                "Dask worker process needs at least one core"
            )
        return self

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        from dask.utils import parse_bytes

        try:
            if parse_bytes(v) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise ValueError(f"expected a size such as 16GiB or 4000MB, got {v!r}") from None
        return v

    def cluster_kwargs(self, kind: str) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class of ``kind``."""
        _, account_key = _CLASSES[kind]
        kw: dict[str, Any] = {
            "cores": self.cores,
            "memory": self.memory,
            "walltime": _walltime_for(kind, self.walltime),
            "job_extra_directives": list(self.job_extra_directives),
            "job_script_prologue": list(self.job_script_prologue),
            "job_name": "tilegraph",
        }
        optional = {
            "queue": self.queue,
            account_key: self.account,
            "processes": self.processes,
            "interface": self.interface,
            "local_directory": self.local_directory,
            "log_directory": os.path.expanduser(self.log_directory)
            if self.log_directory
            else None,
            "python": self.python,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        return kw


def _seconds(text: str) -> int:
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")] + [0]
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _walltime_for(kind: str, text: str) -> str:
    """``[D-]HH:MM[:SS]`` in the form each scheduler takes (LSF: ``HH:MM``; PBS and SGE
    take no days)."""
    seconds = _seconds(text)
    if kind == "slurm":
        return text
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:02d}:{m:02d}" if kind == "lsf" else f"{h:02d}:{m:02d}:{sec:02d}"


def find_profile(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The profile file in effect (see the module docstring), or None."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ProfileError(f"--cluster-profile: no such file {str(path)!r}")
        return p
    env = os.environ.get(PROFILE_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ProfileError(f"${PROFILE_ENV}: no such file {env!r}")
        return p
    for candidate in DEFAULT_PATHS:
        p = Path(candidate).expanduser()
        if p.is_file():
            return p
    return None


def load_profile(kind: str, path: str | os.PathLike[str] | None = None) -> BatchProfile:
    """The validated profile of scheduler ``kind`` (defaults where the file is silent).

    Raises
    ------
    ProfileError
        One line naming the file, the field and what is allowed.
    """
    import yaml

    if kind not in HPC_KINDS:
        raise ProfileError(f"{kind!r} is not a batch scheduler; allowed: {', '.join(HPC_KINDS)}")
    file = find_profile(path)
    data: Any = {}
    if file is not None:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ProfileError(f"cluster profile {file}: not valid YAML ({first})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"cluster profile {file}: cannot read it ({exc})") from None
        if not isinstance(data, dict):
            raise ProfileError(f"cluster profile {file}: expected a mapping of scheduler kinds")
        unknown = sorted(str(k) for k in set(data) - set(HPC_KINDS))
        if unknown:
            raise ProfileError(
                f"cluster profile {file}: unknown section {unknown[0]!r}; "
                f"allowed: {', '.join(HPC_KINDS)}"
            )
        data = data.get(kind) or {}
        if not isinstance(data, dict):
            raise ProfileError(f"cluster profile {file}: section {kind!r} must be a mapping")
    where = f"cluster profile {file}" if file else "cluster profile"
    try:
        return BatchProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or kind
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(BatchProfile.model_fields)}"
        raise ProfileError(f"{where}: field '{kind}.{field}': {msg}") from None


def make_cluster(spec: Spec, profile: BatchProfile, *, submit: bool = True):
    """A dask-jobqueue cluster for ``spec`` (no job submitted yet).

    Parameters
    ----------
    submit : bool
        Jobs will be submitted: the scheduler's submit command must be on ``PATH``
        (checked here, instead of failing only after ``wait_timeout``).
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise SpecError(
            f"cluster spec {spec.kind!r} needs dask-jobqueue (pip install 'tilegraph[hpc]')"
        ) from None
    cls_name, _ = _CLASSES[spec.kind]
    cls = getattr(dask_jobqueue, cls_name)
    command = cls.job_cls.submit_command.split()[0]
    if submit and shutil.which(command) is None:
        raise SpecError(
            f"cluster spec {spec.kind!r}: the submit command {command!r} is not on PATH; run "
            "tilegraph where jobs can be submitted (a login node), or add --dry-run to see "
            "the job script"
        )
    return cls(**profile.cluster_kwargs(spec.kind), scheduler_options={"dashboard_address": ":0"})


def job_script(spec: Spec | str, profile_path: str | os.PathLike[str] | None = None) -> str:
    """The job script ``spec`` would submit, without submitting anything."""
    from .specs import parse_spec

    spec = parse_spec(spec)
    if spec.kind not in HPC_KINDS:
        raise ProfileError(f"--dry-run: {spec} is not a batch scheduler; nothing to submit")
    profile = load_profile(spec.kind, profile_path)
    logs = Path(os.path.expanduser(profile.log_directory)) if profile.log_directory else None
    made_logs = logs is not None and not logs.exists()
    cluster = make_cluster(spec, profile, submit=False)
    try:
        return cluster.job_script()
    finally:
        cluster.close()
        if made_logs and logs.is_dir() and not any(logs.iterdir()):
            logs.rmdir()  # dask-jobqueue makes it; a dry run writes nothing
