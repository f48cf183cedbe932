"""Clusters started outside tilegraph, as a user starts them: a Dask scheduler and workers
as separate processes (``dask scheduler`` / ``dask worker``), and a Ray head
(``ray start --head``), all on loopback. A run through ``--cluster tcp://…`` and
``--cluster ray:HOST:PORT`` or ``ray://HOST:PORT`` (Ray Client) gives the same answer as
an in-process run; the clusters are left running by tilegraph and stopped by the
tests."""

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from helpers import USER_PDE, USER_PDE_DOMAIN, free_port, last_json, stop, tilegraph, wait_port

pytestmark = pytest.mark.slow

SETS = ["--set=n_fine=60", "--set=n_coarse=5", "--set=tol=1e-10"]
BIN = os.path.dirname(sys.executable)


def _env() -> dict:
    return dict(os.environ)


def _tool(name: str) -> str:
    path = shutil.which(name, path=BIN) or shutil.which(name)
    if path is None:
        pytest.skip(f"the {name!r} command is not installed")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = tmp_path_factory.mktemp("ref")
    out = tilegraph(
        "run", "domain-split", *SETS, "--cluster", "sync", "--store", str(store), "--json"
    )
    assert out.returncode == 0, out.stderr
    return last_json(out.stdout)


def _same_answer(res: dict, ref: dict) -> None:
    assert res["status"] == "complete"
    assert res["metrics"]["iterations"] == ref["metrics"]["iterations"]
    a = xr.open_zarr(res["path"] + "/result", consolidated=False).solution.values
    b = xr.open_zarr(ref["path"] + "/result", consolidated=False).solution.values
    np.testing.assert_array_equal(a, b)


USER_PACKAGE = {
    "__init__.py": "",
    "models.py": (
        "import os\n"
        "from tilegraph.tasks.picard.models import GaussianMixture\n\n"
        "# where each process that imports this module says from which file it did\n"
        "with open(os.path.join({probe!r}, f'{{os.getpid()}}.txt'), 'w') as fh:\n"
        "    fh.write(__file__)\n\n\n"
        "def factory(abar):\n"
        "    return GaussianMixture([[2.0, 0.0], [-2.0, 1.0]], [0.3, 0.7], 0.2, abar)\n"
    ),
}
#: picard with the user's model; `model` and `custom` come from the project's config file
PICARD = ["--set=n_samples=4", "--set=batch_size=2", "--set=steps=200", "--set=train_steps=200"]


def _elsewhere(tmp_path):
    """The folder the cluster's processes start in: not the user's project."""
    folder = tmp_path / "cluster-home"
    folder.mkdir(exist_ok=True)
    return folder


def _user_code_run(address: str, tmp_path) -> None:
    """picard with the user's own model package, from the user's project folder, on
    workers that never saw it: the answer of an in-process run."""
    project = tmp_path / "project"
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (project / "tg_userext").mkdir(parents=True, exist_ok=True)
    for name, text in USER_PACKAGE.items():
        (project / "tg_userext" / name).write_text(text.format(probe=str(probe)))
    config = project / "picard.yaml"
    config.write_text("model: custom\ncustom: tg_userext.models:factory\n")
    # started from another folder: the package is importable through the --config
    # file's folder only (Ray would hand the driver's working folder to its workers)
    elsewhere = tmp_path / "user-home"
    elsewhere.mkdir(exist_ok=True)
    runs = tmp_path / "user-runs"
    results = []
    for spec in ("sync", address):
        for old in probe.iterdir():
            old.unlink()
        out = tilegraph(
            "run", "picard", "--config", str(config), *PICARD, "--cluster", spec,
            "--store", str(runs), "--json", cwd=elsewhere, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, f"{spec}: {out.stderr}"
        results.append(last_json(out.stdout))
    # the workers imported the copy their backend shipped, not the project's file (a
    # worker on this machine could have reached that through the driver's sys.path)
    loaded = {f.read_text() for f in probe.iterdir()}
    shipped = {path for path in loaded if not path.startswith(str(project))}
    assert shipped, f"{address}: every process imported the project's own file: {loaded}"
    ref, res = results
    assert res["metrics"]["iterations"] == ref["metrics"]["iterations"]
    a = xr.open_zarr(ref["path"] + "/result", consolidated=False).samples.values
    b = xr.open_zarr(res["path"] + "/result", consolidated=False).samples.values
    np.testing.assert_array_equal(a, b)


def _in_project(address, tmp_path, module: str, source: str, pipeline: str, sets) -> list:
    """Run ``pipeline`` from a project folder holding the user's ``module`` (not on the
    workers' path), on ``sync`` and on the external cluster: the two runs' JSON."""
    project = tmp_path / f"{module}-project"
    project.mkdir(exist_ok=True)
    (project / f"{module}.py").write_text(source)
    results = []
    for spec in ("sync", address):
        out = tilegraph(
            "run", pipeline, *sets, "--cluster", spec, "--store", str(tmp_path / module),
            "--json", cwd=project, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, f"{spec}: {out.stderr}"
        results.append(last_json(out.stdout))
    return results


def _result(res: dict) -> xr.Dataset:
    return xr.open_zarr(res["path"] + "/result", consolidated=False).load()


def _user_pde_run(address: str, tmp_path) -> None:
    """domain-split on the user's own PDE module, run from their project folder: the
    workers (started elsewhere) get the module shipped and give the in-process bits."""
    sets = ["--set=problem.kind=custom", "--set=problem.factory=my_pde:make"]
    sets += [f"--set=problem.domain={USER_PDE_DOMAIN[2]}", "--set=n_fine=40", "--set=tol=1e-12"]
    results = _in_project(address, tmp_path, "my_pde", USER_PDE, "domain-split", sets)
    _same_answer(results[1], results[0])
    assert results[1]["metrics"]["rel_error_exact"] < 1e-2


USER_BLOCKS = '''
import numpy as np
from tilegraph.tasks.bilevel.problems import QuadraticBlocks


class MyBlocks(QuadraticBlocks):
    """The user's own block problem: quadratic blocks with twice the lower curvature."""

    def __init__(self, m=12):
        super().__init__(m=m, seed=3)
        self.A, self.lam, self.Q = self.A * np.sqrt(2.0), self.lam * 2.0, self.Q * 2.0
        self.x_star = None


def make(m=12):
    return MyBlocks(m)
'''


def _user_blocks_run(address: str, tmp_path) -> None:
    """bilevel on a BlockProblem of the user's, from their project folder: the workers
    (started elsewhere) get the module shipped and give the in-process bits."""
    sets = ["--set=problem.kind=custom", "--set=problem.factory=my_blocks:make",
            "--set=blocks_per_iter=4", "--set=max_iter=30", "--set=tol=null"]  # fmt: skip
    ref, got = _in_project(address, tmp_path, "my_blocks", USER_BLOCKS, "bilevel", sets)
    np.testing.assert_array_equal(_result(ref).x.values, _result(got).x.values)


USER_TORCH = '''
import torch


class Net(torch.nn.Module):
    """The user's own torch network of (x, t)."""

    sample_shape = (2, 3)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x, t):
        tt = (t.to(x.dtype) / 1000.0)[:, None, None].expand_as(x)
        return self.f(torch.stack([x, tt], dim=-1))[..., 0]


def factory(abar):
    return Net().double()
'''


def _user_torch_run(address: str, tmp_path) -> None:
    """picard with a torch.nn.Module from the user's factory, from their project folder:
    the workers (started elsewhere) build the module from the shipped file and sample
    what an in-process run samples."""
    if importlib.util.find_spec("torch") is None:  # the torch extra is not installed
        return
    sets = ["--set=model=custom", "--set=custom=my_torch_net:factory", "--set=steps=40",
            "--set=window=10", "--set=n_samples=4", "--set=batch_size=2",
            "--set=tol=1e-3"]  # fmt: skip
    runs = _in_project(address, tmp_path, "my_torch_net", USER_TORCH, "picard", sets)
    ref, got = (_result(r) for r in runs)
    np.testing.assert_allclose(got.samples.values, ref.samples.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        got.sequential.values, ref.sequential.values, rtol=1e-10, atol=1e-12
    )


def test_dask_scheduler_and_workers_started_as_processes(tmp_path, reference):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = _tool("dask")
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        + ["--dashboard-address", "127.0.0.1:0", "--no-show"],
        env=_env(),
        cwd=_elsewhere(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = None
    try:
        wait_port(port, scheduler)
        workers = subprocess.Popen(
            [dask, "worker", address, "--nworkers", "2", "--nthreads", "1"]
            + ["--no-dashboard", "--local-directory", str(tmp_path / "dask-workers")],
            env=_env(),
            cwd=_elsewhere(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)

        out = tilegraph(
            "run", "domain-split", *SETS, "--cluster", address, "--store", str(tmp_path), "--json"
        )
        assert out.returncode == 0, out.stderr
        res = last_json(out.stdout)
        _same_answer(res, reference)
        assert res["metrics"]["workers"] == 2

        # a sweep through the same scheduler: points are tasks on those workers
        out = tilegraph(
            "sweep", "domain-split", "--grid", "n_fine=40,60", "--set=n_coarse=5",
            "--cluster", address, "--store", str(tmp_path), "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert last_json(out.stdout)["complete"] == 2

        _user_code_run(address, tmp_path)
        _user_pde_run(address, tmp_path)
        _user_blocks_run(address, tmp_path)
        _user_torch_run(address, tmp_path)

        # tilegraph left the cluster running
        with Client(address, timeout=30) as client:
            assert len(client.scheduler_info()["workers"]) == 2
    finally:
        if workers is not None:
            stop(workers)
        stop(scheduler)


@pytest.mark.timeout(900)  # a head, two runs and maybe a retry
def test_ray_head_started_with_ray_start(tmp_path, reference):
    """A run through the head's GCS address, and one through its Ray Client server
    (``ray://``, as from a laptop outside the cluster; needs ``ray[client]``)."""
    port = free_port()
    client_port = free_port()
    while client_port == port:
        client_port = free_port()
    ray = _tool("ray")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
        + [f"--ray-client-server-port={client_port}"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        env=_env(),
        cwd=_elsewhere(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, head)
        addresses = [f"ray:127.0.0.1:{port}"]
        if importlib.util.find_spec("grpc") is not None:  # ray[client]
            addresses.append(f"ray://127.0.0.1:{client_port}")
        for address in addresses:
            if address.startswith("ray://"):
                wait_port(client_port, head)
            for _attempt in range(3):
                out = tilegraph(
                    "run", "domain-split", *SETS, "--cluster", address,
                    "--store", str(tmp_path / address.replace("/", "_").replace(":", "_")),
                    "--json", timeout=300,
                )  # fmt: skip
                # The Ray Client server forks a server process per client, and that
                # process sometimes dies during its start-up with empty logs (2 of 7
                # runs here): a gRPC race in Ray's proxier, ray-project/ray#63202 (~7 %
                # of connections there; the fix, posix_spawn, is ray-project/ray#65982).
                # tilegraph never got a connection. Retried and said, so that it stays
                # visible; a Ray that never starts it skips this part.
                flake = ("Starting Ray client server failed", "Initialization failure from server")
                if not any(text in out.stderr for text in flake):
                    break
                warnings.warn(f"{address}: Ray Client server failed; retrying", stacklevel=1)
            else:
                pytest.skip(f"{address}: the Ray Client server did not start in 3 tries")
            assert out.returncode == 0, f"{address}: {out.stderr}"
            res = last_json(out.stdout)
            _same_answer(res, reference)
            assert head.poll() is None, "tilegraph stopped a cluster it did not start"
        _user_code_run(addresses[0], tmp_path)
    finally:
        stop(head)
