"""Batch schedulers (``slurm``, ``pbs``, ``sge``, ``lsf``) through dask-jobqueue.

A *profile* file says how jobs are asked for on a site: one YAML mapping per scheduler
kind, e.g.::

    slurm:
      queue: compute              # partition
      account: proj123
      walltime: "02:00:00"
      cores: 16                   # per job
      memory: 64GiB               # per job
      processes: 4                # Dask workers per job (threads = cores / processes;
                                  # default: cores, one thread each, as local:N)
      jobs: 2                     # default number of jobs (``--cluster slurm:JOBS`` wins)
      job_extra_directives: ["--gres=gpu:1"]
      job_script_prologue:        # shell lines run before the workers start
        - module load python/3.11
        - source ~/venvs/tilegraph/bin/activate
      log_directory: ~/tilegraph-logs
      wait_timeout: 900           # seconds to wait for the first worker
      interface: ib0              # scheduler and dashboard listen there (default below)
      resource_spec: "h_vmem=16G" # PBS/SGE: the -l resources (SGE asks for memory here)
      worker_extra_args: ["--no-dashboard"]  # passed to each `dask worker`
      gpus: 4                     # GPUs per job: one worker per GPU, each pinned to its
                                  # own (CUDA_VISIBLE_DEVICES) and given resource GPU=1
      renew: true                 # replace jobs before their walltime ends (below)
      renew_margin: "00:05:00"    # how long before it the fresh job is submitted

With ``renew: true`` a run may outlast the walltime: a fresh job is submitted
``renew_margin`` before each job's walltime ends, and once its workers have joined, the
old job's workers retire gracefully (their results handed to the others) and the old
job is cancelled (:mod:`tilegraph.cluster.renew`). Where the queue has not started the
fresh job a quarter of the margin before the walltime, the old workers retire then by
themselves (``--lifetime``). Without ``renew``, the workers die with their jobs and the
run stops there; ``--resume`` continues it.

Fields the file leaves out come from the site's Dask config for dask-jobqueue
(``jobqueue.<kind>`` in ``~/.config/dask/jobqueue.yaml``) where it sets them, else from
the defaults below. Give ``walltime`` quoted: an unquoted ``12:00`` is a number in YAML
1.1 (it is read as the text it is here), and a bare number is refused as ambiguous.

The scheduler tilegraph starts for the jobs listens on the profile's ``interface``, or,
without one, where dask-jobqueue puts it (all interfaces: the workers on the compute
nodes must reach it). Its dashboard listens on that interface's IPv4 address, or on
127.0.0.1 without one (reach it through an SSH tunnel).

A ``tls`` section gives the certificates for ``tls://HOST:PORT`` specs (an existing
scheduler started with ``--protocol tls``)::

    tls:
      ca_file: ~/certs/ca.pem     # the CA that signed the scheduler's certificate
      cert: ~/certs/client.pem    # this client's certificate
      key: ~/certs/client-key.pem # its key (leave out when it is in ``cert``)

The file is the one given (``--cluster-profile``), else ``$TILEGRAPH_JOBQUEUE_PROFILE``,
else ``./tilegraph-jobqueue.yaml``, else ``~/.config/tilegraph/jobqueue.yaml``; with
none, the defaults below apply.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .gpu_pin import GPUS_ENV
from .specs import HPC_KINDS, Spec, SpecError

__all__ = [
    "BatchProfile",
    "ProfileError",
    "TlsProfile",
    "dashboard_address",
    "find_profile",
    "job_script",
    "load_profile",
    "load_tls",
]

PROFILE_ENV = "TILEGRAPH_JOBQUEUE_PROFILE"
DEFAULT_PATHS = ("./tilegraph-jobqueue.yaml", "~/.config/tilegraph/jobqueue.yaml")

#: The profile section with the certificates of ``tls://`` specs.
TLS_SECTION = "tls"
_SECTIONS = (*HPC_KINDS, TLS_SECTION)

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
    processes: int | None = Field(
        default=None, ge=1, description="Dask workers per job (default: cores)"
    )
    jobs: int = Field(default=1, ge=1, description="jobs to start")
    gpus: int | None = Field(
        default=None, ge=1, description="GPUs per job: one worker per GPU, pinned to it"
    )
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    interface: str | None = Field(default=None, description="network interface, e.g. ib0")
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = Field(default=None, description="python on the compute nodes")
    resource_spec: str | None = Field(default=None, description="PBS/SGE -l resources")
    worker_extra_args: list[str] = Field(
        default_factory=list, description="extra arguments of each `dask worker`"
    )
    wait_timeout: float = Field(default=600.0, gt=0, description="seconds for a first worker")
    renew: bool = Field(
        default=False, description="replace jobs before their walltime ends (runs outlast it)"
    )
    renew_margin: str = Field(
        default="00:05:00",
        description="[D-]HH:MM[:SS] before the walltime that a fresh job is submitted",
    )

    @field_validator("walltime", "renew_margin", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> str:
        if isinstance(v, int | float) and not isinstance(v, bool):
            # seconds to dask-jobqueue, minutes to Slurm: a number says neither
            raise ValueError(
                f"a bare number ({v!r}) is ambiguous (seconds? minutes?); give it as "
                "'HH:MM:SS', quoted"
            )
        if not isinstance(v, str) or not _WALLTIME.match(v):
            raise ValueError(f"expected [D-]HH:MM[:SS] (quote it in YAML), got {v!r}")
        if any(int(p) > 59 for p in v.split("-")[-1].split(":")[1:]):
            raise ValueError(f"minutes and seconds must be below 60, got {v!r}")
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
        if self.gpus is not None:
            if self.processes is not None and self.processes != self.gpus:
                raise ValueError(
                    f"processes ({self.processes}) must equal gpus ({self.gpus}): one "
                    "worker per GPU (leave processes out)"
                )
            if self.gpus > self.cores:
                raise ValueError(
                    f"gpus ({self.gpus}) must not exceed cores ({self.cores}): each GPU's "
                    "worker needs a core"
                )
            for flag in ("--resources", "--no-nanny"):
                if any(a.split("=")[0] == flag for a in self.worker_extra_args):
                    raise ValueError(
                        f"gpus gives each worker '--resources GPU=1' and pins it to its GPU "
                        f"through its nanny; leave {flag} out of worker_extra_args"
                    )
        if self.renew and 2 * _seconds(self.renew_margin) > _seconds(self.walltime):
            raise ValueError(
                f"renew_margin ({self.renew_margin}) must be at most half the walltime "
                f"({self.walltime}): each job should work longer than it takes to retire"
            )
        return self

    @property
    def renew_after(self) -> int | None:
        """Seconds into a job that its successor is submitted with ``renew`` (the
        walltime less ``renew_margin``), else None."""
        if not self.renew:
            return None
        return _seconds(self.walltime) - _seconds(self.renew_margin)

    @property
    def lifetime(self) -> int | None:
        """Seconds after which each worker retires by itself with ``renew`` (a quarter
        of the margin before the walltime: where the successor came too late, its
        results still go to the other jobs' workers), else None."""
        if not self.renew:
            return None
        return _seconds(self.walltime) - max(_seconds(self.renew_margin) // 4, 1)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> str:
        from dask.utils import parse_bytes

        if not isinstance(v, str) or isinstance(v, bool):
            raise ValueError(f"expected a size such as 16GiB or 4000MB, got {v!r}")
        try:
            if parse_bytes(v) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise ValueError(f"expected a size such as 16GiB or 4000MB, got {v!r}") from None
        return v

    @property
    def workers_per_job(self) -> int:
        """Dask worker processes each job starts (``processes``, default one per GPU
        with ``gpus``, else ``cores``)."""
        return self.processes or self.gpus or self.cores

    def notes(self, kind: str) -> list[str]:
        """What a dry run should tell about this profile on ``kind`` (one line each)."""
        out = []
        if kind == "sge" and self.resource_spec is None:
            out.append(
                "SGE jobs ask for memory only through resource_spec (e.g. 'h_vmem=16G') and "
                "for cores through a parallel environment (job_extra_directives: "
                f"['-pe smp {self.cores}']); this profile sets neither"
            )
        if kind == "pbs" and self.resource_spec is not None:
            out.append("resource_spec replaces the select line dask-jobqueue writes from cores "
                       "and memory: ask for them there")  # fmt: skip
        if self.resource_spec is not None and kind not in ("pbs", "sge"):
            out.append(f"resource_spec is for pbs and sge; {kind} ignores it")
        asked = " ".join([*self.job_extra_directives, self.resource_spec or ""]).lower()
        if self.gpus is not None and "gpu" not in asked:
            out.append(
                f"gpus: {self.gpus} pins each worker to one of the job's GPUs, but no "
                "directive asks the scheduler for them (slurm: job_extra_directives: "
                f"['--gres=gpu:{self.gpus}']; pbs: resource_spec "
                f"'select=1:ncpus={self.cores}:ngpus={self.gpus}')"
            )
        if self.renew:
            out.append(
                f"renew: a fresh job is submitted {_clock(self.renew_after)} into each job "
                f"(walltime {self.walltime}); the old one's workers retire once the fresh "
                f"one's have joined, at the latest {_clock(self.lifetime)} into it"
            )
        if self.cores % self.workers_per_job:
            out.append(
                f"cores={self.cores} do not split evenly over processes={self.workers_per_job}: "
                f"each worker gets {self.cores // self.workers_per_job} thread(s)"
            )
        return out

    def cluster_kwargs(self, kind: str, job_name: str = "tilegraph") -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class of ``kind`` (its jobs
        named ``job_name``)."""
        _, account_key = _CLASSES[kind]
        kw: dict[str, Any] = {
            "cores": self.cores,
            "memory": self.memory,
            "walltime": _walltime_for(kind, self.walltime),
            # dask-jobqueue's own default is about sqrt(cores) workers; tilegraph's
            # estimates, like local:N, count one single-threaded worker per core
            "processes": self.workers_per_job,
            "job_extra_directives": list(self.job_extra_directives),
            # the compute nodes' workers get the tuning local workers get (dask_backend)
            "job_script_prologue": [*WORKER_ENV, *self._gpu_env(), *self.job_script_prologue],
            "worker_extra_args": [
                *self.worker_extra_args,
                *self._gpu_args(),
                *self._lifetime_args(),
            ],
            "job_name": job_name,
        }
        optional = {
            "queue": self.queue,
            account_key: self.account,
            "resource_spec": self.resource_spec if kind in ("pbs", "sge") else None,
            "interface": self.interface,
            "local_directory": self.local_directory,
            "log_directory": os.path.expanduser(self.log_directory)
            if self.log_directory
            else None,
            "python": self.python,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        return kw

    def _gpu_env(self) -> list[str]:
        return [] if self.gpus is None else [f"export {GPUS_ENV}={self.gpus}"]

    def _gpu_args(self) -> list[str]:
        if self.gpus is None:
            return []
        return ["--resources", "GPU=1", "--preload-nanny", "tilegraph.cluster.gpu_pin"]

    def _lifetime_args(self) -> list[str]:
        return [] if self.lifetime is None else ["--lifetime", f"{self.lifetime}s"]


class TlsProfile(BaseModel):
    """Certificates for a ``tls://`` scheduler (the profile's ``tls`` section)."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str = Field(description="CA certificate that signed the scheduler's")
    cert: str = Field(description="this client's certificate (PEM)")
    key: str | None = Field(default=None, description="its private key, unless in cert")

    @field_validator("ca_file", "cert", "key")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        path = os.path.expanduser(v)
        if not os.path.isfile(path):
            raise ValueError(f"no such file {v!r}")
        return path


#: Shell lines each job runs before its workers: the Dask config tilegraph's own local
#: workers run with (``dask_backend.WORKER_CONFIG``; the profiler costs 2-2.5x).
WORKER_ENV = (
    "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",
    "unset MALLOC_TRIM_THRESHOLD_",
)

#: dask-jobqueue's config keys (``jobqueue.<kind>.<key>``) for the profile's fields.
_SITE_KEYS = {
    "queue": "queue", "walltime": "walltime", "cores": "cores", "memory": "memory",
    "processes": "processes", "job_extra_directives": "job-extra-directives",
    "job_script_prologue": "job-script-prologue", "interface": "interface",
    "local_directory": "local-directory", "log_directory": "log-directory",
    "python": "python", "resource_spec": "resource-spec",
    "worker_extra_args": "worker-extra-args",
}  # fmt: skip


def _site_defaults(kind: str) -> dict[str, Any]:
    """The fields the site's Dask config for dask-jobqueue sets for ``kind``: set in its
    config files or environment, or (from Python, ``dask.config.set``) to a value other
    than dask-jobqueue's shipped default (walltime 00:30:00, which is not a site's).
    dask-jobqueue is not imported here (see :func:`_import_jobqueue`)."""
    import importlib.util

    import dask
    import yaml

    site = dask.config.get(f"jobqueue.{kind}", default={}) or {}
    written = dask.config.collect(env=os.environ).get("jobqueue", {}).get(kind, {}) or {}
    spec = importlib.util.find_spec("dask_jobqueue")
    shipped = {}
    if spec is not None and spec.origin:
        try:
            path = os.path.join(os.path.dirname(spec.origin), "jobqueue.yaml")
            with open(path, encoding="utf-8") as fh:
                shipped = (yaml.safe_load(fh) or {}).get("jobqueue", {}).get(kind, {}) or {}
        except OSError:
            pass
    keys = {**_SITE_KEYS, "account": _CLASSES[kind][1]}
    out = {}
    for field, key in keys.items():
        value = site.get(key)
        if value in (None, [], "") or (key not in written and value == shipped.get(key)):
            continue
        if field == "walltime" and isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 made an unquoted 12:00:00 in the site's file the seconds 43200
            h, rem = divmod(value, 3600)
            value = f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"
        out[field] = value
    return out


def _import_jobqueue():
    """``import dask_jobqueue``, keeping this process's SIGINT handler: dask-jobqueue 0.9
    replaces it on import with one that calls ``sys.exit()`` (Ctrl-C then ended a run
    with status 0 and no word)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    finally:
        if main and saved is not None:
            signal.signal(signal.SIGINT, saved)
    return dask_jobqueue


def _seconds(text: str) -> int:
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")] + [0]
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _clock(seconds: int) -> str:
    """``seconds`` as ``HH:MM:SS``."""
    h, rem = divmod(seconds, 3600)
    return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"


def _walltime_for(kind: str, text: str) -> str:
    """``[D-]HH:MM[:SS]`` in the form each scheduler takes (LSF: ``HH:MM``, rounded up; PBS and SGE
    take no days; Slurm reads a bare ``MM:SS``, so it gets the seconds spelled out)."""
    seconds = _seconds(text)
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    if kind == "slurm":
        d, h = divmod(h, 24)
        return f"{d}-{h:02d}:{m:02d}:{sec:02d}" if d else f"{h:02d}:{m:02d}:{sec:02d}"
    if kind == "lsf":  # whole minutes: rounded up, not cut (02:00:30 is not 02:00)
        h, m = divmod((seconds + 59) // 60, 60)
        return f"{h:02d}:{m:02d}"
    return f"{h:02d}:{m:02d}:{sec:02d}"


def find_profile(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The profile file in effect (see the module docstring), or None."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            what = "a folder, not a YAML file" if p.is_dir() else "no such file"
            raise ProfileError(f"--cluster-profile: {what} {str(path)!r}")
        return p
    env = os.environ.get(PROFILE_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            what = "a folder, not a YAML file" if p.is_dir() else "no such file"
            raise ProfileError(f"${PROFILE_ENV}: {what} {env!r}")
        return p
    for candidate in DEFAULT_PATHS:
        p = Path(candidate).expanduser()
        if p.is_file():
            return p
    return None


class TextBase60Loader(yaml.SafeLoader):
    """YAML's safe loader, but ``12:00`` stays the text it is (as YAML 1.2 reads it), not
    YAML 1.1's base-60 number 720: a walltime of 12 hours, not 12 minutes; a sweep's
    ``--grid n_fine=20:40`` (``pipelines.config`` builds on it)."""

    def construct_base_60(self, node):
        if ":" in str(node.value):
            return self.construct_scalar(node)
        if node.tag.endswith(":int"):
            return self.construct_yaml_int(node)
        return self.construct_yaml_float(node)


TextBase60Loader.add_constructor("tag:yaml.org,2002:int", TextBase60Loader.construct_base_60)
TextBase60Loader.add_constructor("tag:yaml.org,2002:float", TextBase60Loader.construct_base_60)


def _read_profile(path: str | os.PathLike[str] | None) -> tuple[Path | None, dict]:
    """The profile file in effect and its sections (``{}`` without a file)."""
    import yaml

    file = find_profile(path)
    if file is None:
        return None, {}
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=TextBase60Loader) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ProfileError(f"cluster profile {file}: not valid YAML ({first})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cluster profile {file}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"cluster profile {file}: expected a mapping of scheduler kinds")
    unknown = sorted(str(k) for k in set(data) - set(_SECTIONS))
    if unknown:
        raise ProfileError(
            f"cluster profile {file}: unknown section {unknown[0]!r}; "
            f"allowed: {', '.join(_SECTIONS)}"
        )
    return file, data


def _validate(model: type[BaseModel], file: Path | None, section: str, data: Any) -> Any:
    """``model`` validated from a profile section, or a one-line `ProfileError`."""
    where = f"cluster profile {file}" if file else "cluster profile"
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: section {section!r} must be a mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(model.model_fields)}"
        what = f"field '{section}.{field}'" if field else f"section '{section}'"
        raise ProfileError(f"{where}: {what}: {msg}") from None


def load_profile(kind: str, path: str | os.PathLike[str] | None = None) -> BatchProfile:
    """The validated profile of scheduler ``kind`` (defaults where the file is silent).

    Raises
    ------
    ProfileError
        One line naming the file, the field and what is allowed.
    """
    if kind not in HPC_KINDS:
        raise ProfileError(f"{kind!r} is not a batch scheduler; allowed: {', '.join(HPC_KINDS)}")
    file, data = _read_profile(path)
    if file is not None and kind not in data:
        have = [k for k in data if k in HPC_KINDS]
        raise ProfileError(
            f"cluster profile {file}: no {kind!r} section (it has: {', '.join(have) or 'none'});"
            f" add a '{kind}:' section with the queue, account, walltime, cores and memory"
        )
    section = data.get(kind) or {}
    if isinstance(section, dict):
        try:
            site = _site_defaults(kind)
        except ImportError:  # no dask-jobqueue: make_cluster says what to install
            site = {}
        if section.get("gpus") is not None:  # one worker per GPU: not a site's count
            site.pop("processes", None)
        section = {**site, **section}
    return _validate(BatchProfile, file, kind, section)


def describe_defaults(kind: str | None = None) -> str:
    """The profile fields a run without a profile file uses, as ``key=value`` text (with
    ``kind``: the site's Dask config for it where it sets them)."""
    fields = BatchProfile()
    if kind is not None:
        try:
            fields = BatchProfile.model_validate(_site_defaults(kind))
        except (ImportError, ValidationError):
            pass
    keys = ("queue", "account", "walltime", "cores", "memory", "processes", "jobs", "python")
    values = {k: getattr(fields, k) for k in keys}
    values["processes"] = fields.workers_per_job
    values["python"] = values["python"] or f"{sys.executable} (this interpreter)"
    return ", ".join(f"{k}={v}" for k, v in values.items())


def load_tls(path: str | os.PathLike[str] | None = None) -> TlsProfile | None:
    """The profile's ``tls`` section, or None when the profile (or the file) has none.

    Raises
    ------
    ProfileError
        One line naming the file and the field (a missing certificate file, say).
    """
    file, data = _read_profile(path)
    if data.get(TLS_SECTION) is None:
        return None
    return _validate(TlsProfile, file, TLS_SECTION, data[TLS_SECTION])


def _interface_ipv4(interface: str) -> str:
    """The IPv4 address of network ``interface`` on this host."""
    import socket

    import psutil

    addrs = psutil.net_if_addrs()
    for addr in addrs.get(interface, ()):
        if addr.family == socket.AF_INET:
            return addr.address
    have = sorted(n for n, a in addrs.items() if any(x.family == socket.AF_INET for x in a))
    raise ProfileError(
        f"cluster profile: interface {interface!r} has no IPv4 address on this host; "
        f"interfaces with one: {', '.join(have) or 'none'}"
    )


def cancel_command(kind: str, job_name: str) -> list[str]:
    """The command that cancels the user's jobs named ``job_name`` on scheduler ``kind``
    (run by :mod:`tilegraph.cluster.reaper` when a driver is killed)."""
    return {
        "slurm": ["scancel", "--name", job_name],
        "pbs": ["sh", "-c", f"qselect -N {job_name} | xargs -r qdel"],
        "sge": ["qdel", job_name],
        "lsf": ["bkill", "-J", job_name, "0"],
    }[kind]


def dashboard_address(profile: BatchProfile) -> str:
    """Where the scheduler's dashboard listens: the IPv4 address of the profile's
    ``interface``, else loopback (any free port)."""
    host = "127.0.0.1" if profile.interface is None else _interface_ipv4(profile.interface)
    return f"{host}:0"


def make_cluster(
    spec: Spec, profile: BatchProfile, *, submit: bool = True, job_name: str = "tilegraph"
):
    """A dask-jobqueue cluster for ``spec`` (no job submitted yet).

    Parameters
    ----------
    submit : bool
        Jobs will be submitted: the scheduler's submit command must be on ``PATH``
        (checked here, instead of failing only after ``wait_timeout``).
    """
    try:
        dask_jobqueue = _import_jobqueue()
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
    return cls(
        **profile.cluster_kwargs(spec.kind, job_name),
        scheduler_options={"dashboard_address": dashboard_address(profile)},
    )


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
