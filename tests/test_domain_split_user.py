"""domain-split on the user's own PDE: coefficients from a factory in the user's folder
(not in the package) on a box that is not the unit cube, and from a dataset the test
writes (coarser than the fine grid, non-uniform spacing), each checked against an
independent reference; bad factories and datasets exit 2 with one line."""

import math

import numpy as np
import pytest
import tilegraph
import xarray as xr
from helpers import USER_PDE, USER_PDE_DOMAIN
from helpers import tilegraph as cli
from tilegraph.pipelines.config import ConfigError


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The user's project folder, the working directory, with their PDE module."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_pde.py").write_text(USER_PDE)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _custom(d: int, n_fine: int, **extra) -> dict:
    return {
        "d": d,
        "n_fine": n_fine,
        "n_coarse": 5,
        "tol": 1e-12,
        "problem": {
            "kind": "custom",
            "factory": "my_pde:make",
            "params": {"d": d},
            "domain": USER_PDE_DOMAIN[d],
        },
        **extra,
    }


def _panel_titles(monkeypatch) -> list:
    """The panels of every ``summary.png`` the runs draw from now on: for each figure,
    its rows of panel titles, left to right (blank panels left out)."""
    from tilegraph.pipelines.domain_split import runner

    titles, draw = [], runner.summary_figure

    def spy(*args, **kwargs):
        fig = draw(*args, **kwargs)
        rows: dict = {}
        for ax in fig.axes:
            if ax.axison and ax.get_title():  # colour bars have no title
                spec = ax.get_subplotspec()
                rows.setdefault(spec.rowspan.start, {})[spec.colspan.start] = ax.get_title()
        grid = [rows[r] for r in sorted(rows)]
        titles.append([[row.get(c, "") for c in range(max(row) + 1)] for row in grid])
        return fig

    monkeypatch.setattr(runner, "summary_figure", spy)
    return titles


def test_custom_pde_on_a_box_converges_at_second_order(project, executors, monkeypatch):
    panels = _panel_titles(monkeypatch)
    errors = []
    for n in (20, 40, 80):
        run = tilegraph.run(
            "domain-split", config=_custom(2, n), cluster=executors("sync"), store=project / "r"
        )
        m = run.metrics
        assert m["converged"] and m["rel_error_direct"] < 1e-9
        errors.append(m["rel_error_exact"])
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    assert all(abs(p - 2.0) <= 0.1 for p in orders), (errors, orders)
    ds = run.open_dataset("result")  # the box's coordinates, not the unit square's
    assert float(ds.x[0]) == 0.0 and float(ds.x[-1]) == 2.0
    assert float(ds.y[0]) == -1.0 and float(ds.y[-1]) == 1.0
    x, y = np.meshgrid(ds.x.values, ds.y.values, indexing="ij")
    exact = np.exp(0.5 * x) * np.sin(y)
    np.testing.assert_allclose(ds.exact.values, exact, rtol=0, atol=1e-14)
    assert np.abs(ds.solution.values - exact).max() < 1e-3
    # the coefficient fields beside the solution, its error and the convergence
    assert panels[-1] == [
        ["solution u", "error u - u_exact", "convergence"], ["alpha_x", "alpha_y", "|beta|"]
    ]  # fmt: skip


def test_custom_pde_same_bits_on_every_backend(project):
    """The module is shipped to workers that never saw the project folder (Ray gets it
    at start-up: each backend connects here)."""
    runs = [
        tilegraph.run("domain-split", config=_custom(2, 30), cluster=c, store=project / c)
        for c in ("sync", "local:2", "ray:2")
    ]
    ref = runs[0].open_dataset("result").solution.values
    for run in runs[1:]:
        np.testing.assert_array_equal(run.open_dataset("result").solution.values, ref)
        assert run.metrics["iterations"] == runs[0].metrics["iterations"]
        assert run.metrics["workers"] == 2 and run.metrics["rel_error_exact"] < 1e-2


# --- from data ---------------------------------------------------------------------
def _write_dataset(path, d: int = 2, **changes):
    """Fields on a coarse, non-uniform grid of [0, 2] x [-1, 1] (x [0, 1])."""
    rng = np.random.default_rng(7)
    axes = {}
    for name, (a, b), n in zip("xyz", USER_PDE_DOMAIN[d], (13, 17, 9), strict=False):
        t = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.02, 0.98, n - 2)]))
        axes[name] = a + (b - a) * t
    dims = tuple(axes)
    grids = np.meshgrid(*axes.values(), indexing="ij")
    x, y = grids[0], grids[1]
    data = {
        "alpha_x": 1.0 + 0.5 * x**2,
        "alpha_y": 1.5 + 0.5 * np.sin(x * y),
        "beta_x": 1.0 - 0.5 * y,
        "beta_y": 0.5 * x,
        "f": np.cos(x) * (1 + y**2),
        "g": np.sin(x + y),
    }
    if d == 3:
        data.update(alpha_z=1.0 + 0.25 * grids[2] ** 2, beta_z=0.3 + 0 * x)
    data.update(changes)
    ds = xr.Dataset(
        {
            k: (dims, v) if not isinstance(v, tuple) else v
            for k, v in data.items()
            if v is not None
        },
        coords=axes,
    )
    if "g" in ds:  # carried over to the result (not needed: checked where given)
        ds["g"].attrs["units"] = "K"
    ds["x"].attrs["units"] = "m"
    ds = ds.chunk({dim: 5 for dim in dims})
    ds.to_zarr(path, mode="w", consolidated=False)
    return ds


class _Interpolated:
    """The dataset's fields linearly interpolated by SciPy: the reference's problem."""

    def __init__(self, ds, d):
        from scipy.interpolate import RegularGridInterpolator

        dims = ("x", "y", "z")[:d]
        self.domain = [(float(ds[a][0]), float(ds[a][-1])) for a in dims]
        self.f = {
            k: RegularGridInterpolator(tuple(ds[a].values for a in dims), ds[k].values)
            for k in ds.data_vars
        }
        self.d = d

    def _at(self, name, coords):
        pts = np.stack([np.broadcast_to(c, np.broadcast_shapes(*[c.shape for c in coords]))
                        for c in coords], axis=-1)  # fmt: skip
        return self.f[name](pts)

    def _phys(self, coords):
        return tuple(a + (b - a) * c for c, (a, b) in zip(coords, self.domain, strict=True))

    def alpha_k(self, k, coords):
        length = self.domain[k][1] - self.domain[k][0]
        return self._at(f"alpha_{'xyz'[k]}", self._phys(coords)) / length**2

    def beta_k(self, k, coords):
        length = self.domain[k][1] - self.domain[k][0]
        return self._at(f"beta_{'xyz'[k]}", self._phys(coords)) / length


@pytest.mark.parametrize("d", [2, 3])
def test_dataset_values_are_scipys_linear_interpolation(tmp_path, d):
    """The workers' interpolation against SciPy's, on a non-uniform grid stored in
    chunks of 5: on tensor grids of points (the blocks' coordinates, interpolated one
    axis at a time) and scattered points, asked in an order that makes later boxes come
    from chunks kept by earlier ones."""
    from scipy.interpolate import RegularGridInterpolator
    from tilegraph.pipelines.domain_split.data import DatasetProblem

    ds = _write_dataset(tmp_path / "coeffs.zarr", d).load()
    dims = ("x", "y", "z")[:d]
    problem = DatasetProblem(str(tmp_path / "coeffs.zarr"), d)
    rng = np.random.default_rng(3)
    (lo, hi) = zip(*USER_PDE_DOMAIN[d], strict=True)
    for trial in range(6):
        if trial % 2:  # scattered points
            pts = [rng.uniform(a, b, 50) for a, b in zip(lo, hi, strict=True)]
        else:  # a tensor grid over part of the box
            pts = []
            for k, (a, b) in enumerate(zip(lo, hi, strict=True)):
                t = np.sort(rng.uniform(a, b, 2 + trial))
                pts.append(t.reshape([-1 if j == k else 1 for j in range(d)]))
        shape = np.broadcast_shapes(*(p.shape for p in pts))
        flat = np.stack([np.broadcast_to(p, shape) for p in pts], axis=-1)
        for name in ("alpha_x", "beta_y", "f"):
            want = RegularGridInterpolator(tuple(ds[a].values for a in dims), ds[name].values)
            np.testing.assert_allclose(problem.at(name, tuple(pts)), want(flat), rtol=1e-13)


@pytest.mark.parametrize("d", [2, 3])
def test_dataset_pde_matches_scipy_direct_solve(tmp_path, executors, d, monkeypatch):
    from scipy.sparse.linalg import spsolve
    from tilegraph.tasks.domain_split.operator import assemble, fine_axes

    ds = _write_dataset(tmp_path / "coeffs.zarr", d)
    n = 40 if d == 2 else 10
    cfg = {
        "d": d,
        "n_fine": n,
        "n_coarse": 5,
        "tol": 1e-12,
        "direct_reference": False,
        "problem": {"kind": "dataset", "dataset": str(tmp_path / "coeffs.zarr")},
    }
    panels = _panel_titles(monkeypatch)
    run = tilegraph.run("domain-split", config=cfg, cluster=executors("local:2"), store=tmp_path)
    assert "rel_error_exact" not in run.metrics  # nothing to compare with
    where = "" if d == 2 else " (middle z plane)"  # no error panel, and no gap for it
    fields = ["alpha_x", "alpha_y", "alpha_z"][:d] + ["|beta|"]
    assert panels == [[["solution u" + where, "convergence"], [f + where for f in fields]]]
    got = run.open_dataset("result")
    # the reference: SciPy's interpolation of the same data, assembled and solved
    ref_problem = _Interpolated(ds.load(), d)
    axes = fine_axes(n, d)
    A_ii, A_ib, interior = assemble(ref_problem, axes, "central")
    phys = np.meshgrid(*[got[a].values for a in "xyz"[:d]], indexing="ij")
    pts = np.stack(phys, axis=-1)
    f = ref_problem.f["f"](pts)
    g = ref_problem.f["g"](pts)
    U = g.copy()
    U[interior] = spsolve(A_ii.tocsc(), f[interior] - A_ib @ g[~interior])
    u = got.solution.values
    assert np.linalg.norm(u - U) / np.linalg.norm(U) <= 1e-8
    assert float(got.x[-1]) == 2.0 and float(got.y[0]) == -1.0  # the data's box
    assert got.solution.attrs["units"] == "K" and got.x.attrs["units"] == "m"
    assert "units" not in got.y.attrs  # the data say none


# --- bad input ---------------------------------------------------------------------
BAD_DATA = [
    ({"f": None}, "variable 'f' is missing"),
    ({"g": (("y", "x"), np.ones((17, 13)))}, None),  # transposed dims: allowed
    ({"beta_y": ("x", np.ones(13))}, "variable 'beta_y' has dims"),
    ({"f": (("x", "y"), np.full((13, 17), np.nan))}, "variable 'f' has NaN"),
    ({"alpha_y": (("x", "y"), np.zeros((13, 17)))}, "variable 'alpha_y' must be > 0"),
]


@pytest.mark.parametrize(("changes", "needle"), BAD_DATA)
def test_bad_dataset_exits_2_naming_the_variable(tmp_path, changes, needle):
    _write_dataset(tmp_path / "bad.zarr", **changes)
    store = tmp_path / "runs"
    args = ["run", "domain-split", "--cluster", "sync", "--store", str(store)]
    args += ["--set", "problem.kind=dataset", "--set", f"problem.dataset={tmp_path}/bad.zarr"]
    out = cli(*args, "--set", "n_fine=20", "--set", "n_coarse=5")
    if needle is None:
        assert out.returncode == 0, out.stderr
        return
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and needle in lines[0]
    assert not store.exists()


BAD_FACTORIES = [
    ("def make(d=2):\n    return object()\n", "without alpha_k, beta_k, rhs, boundary"),
    ("def make(d=2):\n    raise RuntimeError('no licence')\n", "raised RuntimeError: no licence"),
    (USER_PDE.replace("1.0 + 0.5 * x**2", "-1.0 + 0 * x"), "alpha_k(0, coords) must be > 0"),
    (USER_PDE.replace("return self.exact(c)", "return self.exact(c) * np.nan"), "not finite"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "needle"), BAD_FACTORIES)
def test_bad_factory_exits_2_with_one_line(tmp_path, module, needle):
    (tmp_path / "bad_pde.py").write_text(module)
    store = tmp_path / "runs"
    args = ["run", "domain-split", "--cluster", "sync", "--store", str(store)]
    args += ["--set", "problem.kind=custom", "--set", "problem.factory=bad_pde:make"]
    out = cli(*args, "--set", "problem.domain=[[0, 2], [-1, 1]]", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "problem" in lines[0] and not store.exists()


STRONG_ADVECTION = """
import numpy as np


class Strong:
    def _const(self, value, coords):
        return np.full(np.broadcast_shapes(*(np.shape(c) for c in coords)), value)

    def alpha_k(self, k, coords):
        return self._const(1.0, coords)

    def beta_k(self, k, coords):
        return self._const(200.0 if k == 0 else 0.0, coords)

    def rhs(self, coords):
        return self._const(1.0, coords)

    def boundary(self, coords):
        return self._const(0.0, coords)


def make():
    return Strong()
"""


def test_auto_grid_too_coarse_for_a_users_advection_names_one_that_fits(tmp_path):
    """The user's coefficients are known only in preflight: the line says what
    ``n_coarse=auto`` took and the divisor of ``n_fine`` that keeps Peclet <= 1."""
    (tmp_path / "strong.py").write_text(STRONG_ADVECTION)
    store = tmp_path / "runs"
    args = ["run", "domain-split", "--cluster", "sync", "--store", str(store)]
    args += ["--set", "problem.kind=custom", "--set", "problem.factory=strong:make"]
    out = cli(*args, "--set", "n_fine=1024", "--set", "n_coarse=auto", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "n_coarse=auto took 32: coarse cell Peclet number 3.12 > 1" in lines[0], lines[0]
    assert lines[0].endswith("use --set scheme=upwind or n_coarse=128") and not store.exists()


@pytest.mark.parametrize(
    ("problem", "needle"),
    [
        ({"kind": "custom"}, "kind=custom needs factory"),
        ({"kind": "dataset"}, "kind=dataset needs dataset"),
        ({"factory": "m:f"}, "factory is used only with kind=custom .here kind=constant.: set"),
        ({"kind": "custom", "factory": "m:f", "dataset": "d.zarr"}, "dataset is used only"),
        ({"kind": "constant", "params": {"a": 1}}, "params"),
        ({"kind": "constant", "domain": [[0, 1]]}, "domain needs 2 intervals"),
        ({"kind": "constant", "domain": [[1, 0], [0, 1]]}, "a_k < b_k"),
    ],
)
def test_problem_fields_are_checked(problem, needle):
    from tilegraph.pipelines.config import build_config

    with pytest.raises(ConfigError, match=needle):
        build_config(tilegraph.get_pipeline("domain-split"), config_file={"problem": problem})


def test_a_relative_dataset_path_is_stored_absolute(tmp_path, monkeypatch):
    """Workers started elsewhere, and a resume from another folder, find the data."""
    from tilegraph.pipelines.config import build_config

    monkeypatch.chdir(tmp_path)
    problem = {"kind": "dataset", "dataset": "coeffs.zarr"}
    cfg = build_config(tilegraph.get_pipeline("domain-split"), config_file={"problem": problem})
    assert cfg.problem.dataset == str(tmp_path / "coeffs.zarr")
    problem["dataset"] = "s3://bucket/coeffs.zarr"
    cfg = build_config(tilegraph.get_pipeline("domain-split"), config_file={"problem": problem})
    assert cfg.problem.dataset == "s3://bucket/coeffs.zarr"


def test_frozen_boxes_are_estimated_smaller_than_their_factorisations():
    from tilegraph.pipelines.config import build_config

    pipe = tilegraph.get_pipeline("domain-split")
    sets = ["problem.kind=variable", "n_fine=400", "n_coarse=10", "direct_reference=false"]
    lu = pipe.estimate(build_config(pipe, sets=[*sets, "box_solver=lu"]), 2)
    frozen = pipe.estimate(build_config(pipe, sets=[*sets, "box_solver=frozen"]), 2)
    assert frozen.worker_bytes < lu.worker_bytes
