"""The user's own PDE: from a factory in their code, or from a dataset.

``problem.kind=custom``: :class:`FactoryProblem` carries the factory's import path and
arguments, and each process builds the user's object from them.

``problem.kind=dataset problem.dataset=URL``: any xarray-readable Zarr store (a path or
an fsspec URL) with variables ``alpha_x, alpha_y[, alpha_z]``, ``beta_x, beta_y[,
beta_z]``, ``f`` and ``g`` on 1-D coordinates ``x, y[, z]`` (increasing, any spacing and
resolution). :class:`DatasetProblem` evaluates them by multilinear interpolation at the
points a worker asks for, reading only the chunks around them; it is what the workers
get (a URL and a few numbers, not the data). :func:`check_dataset` checks a dataset on
the driver before anything is written, one chunk at a time.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

AXES = ("x", "y", "z")

#: NumPy dtype kinds of real numbers (booleans, integers, floats): what a coefficient
#: may be given in; complex values, strings and objects are refused.
REAL_KINDS = "biuf"

#: Bytes of interpolated values a process keeps (the same block is asked for again at
#: every operator application).
CACHE_BYTES = 256 << 20


def variables(d: int) -> tuple[str, ...]:
    """The variables a ``d``-dimensional dataset must have."""
    return (
        *(f"alpha_{a}" for a in AXES[:d]),
        *(f"beta_{a}" for a in AXES[:d]),
        "f",
        "g",
    )


@functools.lru_cache(maxsize=8)
def _open(url: str, options: tuple) -> Any:
    import xarray as xr

    kwargs = {"storage_options": dict(options)} if options else {}
    return xr.open_zarr(url, consolidated=False, chunks=None, **kwargs)


@dataclass(frozen=True)
class DatasetProblem:
    """``-sum_k alpha_k u_kk + sum_k beta_k u_k = f``, ``u = g`` on the boundary, with
    every field interpolated (multilinear) from the dataset at ``url``.

    Methods take and return physical coordinates (wrap it in
    :class:`~tilegraph.tasks.domain_split.problems.OnBox` for the solver).

    Parameters
    ----------
    url : str
        The dataset (checked by :func:`check_dataset`).
    d : int
        Space dimension.
    storage_options : tuple of (str, value)
        fsspec options of ``url``.
    """

    url: str
    d: int
    storage_options: tuple = ()
    kind: str = "dataset"
    constant_coefficients: bool = False
    _cache: OrderedDict = field(default_factory=OrderedDict, compare=False, hash=False, repr=False)
    _size: list = field(default_factory=lambda: [0], compare=False, hash=False, repr=False)

    def __getstate__(self):
        return {"url": self.url, "d": self.d, "storage_options": self.storage_options}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "kind", "dataset")
        object.__setattr__(self, "constant_coefficients", False)
        object.__setattr__(self, "_cache", OrderedDict())
        object.__setattr__(self, "_size", [0])

    def alpha_k(self, k: int, coords):
        return self.at(f"alpha_{AXES[k]}", coords)

    def beta_k(self, k: int, coords):
        return self.at(f"beta_{AXES[k]}", coords)

    def rhs(self, coords):
        return self.at("f", coords)

    def boundary(self, coords):
        return self.at("g", coords)

    def units(self) -> dict[str, str]:
        """The ``units`` attributes of ``g`` (as ``"u"``: the solution's) and of the
        coordinates, where the dataset has them."""
        ds = _open(self.url, self.storage_options)
        named = {"u": ds["g"], **{a: ds[a] for a in AXES[: self.d]}}
        return {k: str(v.attrs["units"]) for k, v in named.items() if v.attrs.get("units")}

    def extent(self) -> tuple[tuple[float, float], ...]:
        """``(first, last)`` coordinate per axis: the box the data cover."""
        ds = _open(self.url, self.storage_options)
        return tuple((float(ds[a].values[0]), float(ds[a].values[-1])) for a in AXES[: self.d])

    def at(self, name: str, coords):
        """Variable ``name`` interpolated at ``coords`` (a tuple of ``d`` broadcastable
        arrays, NumPy or another array namespace's; the result is in the same one).

        Only the index box around the points is read; values are cached per process
        (up to :data:`CACHE_BYTES`), since the same blocks are asked for repeatedly.
        """
        from array_api_compat import array_namespace
        from tilegraph.tasks.devices import to_host

        host = [np.asarray(to_host(c), dtype=np.float64) for c in coords]
        key = (name, tuple((c.shape, c.tobytes()) for c in host))
        out = self._cache.get(key)
        if out is None:
            out = self._interpolate(name, host)
            self._keep(key, out)
        else:
            self._cache.move_to_end(key)
        xp = array_namespace(*coords)
        return out if xp is np or "numpy" in xp.__name__ else xp.asarray(out)

    def _region(self, name, var, dims, lo, hi):
        """Values of variable ``var`` (dims ``dims`` in any stored order) on the index
        box ``lo .. hi`` (exclusive, in ``dims`` order), widened to whole Zarr chunks:
        the array, in ``dims`` order, and the index of its first element.

        Chunks are kept one by one (the boxes of one worker's blocks share chunks,
        and each lattice of boxes asks for another box): a box whose chunks are all
        kept is assembled from them, any other is read in one call and its chunks
        kept."""
        stored = dict(zip(var.dims, var.encoding.get("chunks") or var.shape, strict=True))
        sizes = dict(zip(var.dims, var.shape, strict=True))
        chunks = [stored[dim] for dim in dims]
        a = [(x // c) * c for x, c in zip(lo, chunks, strict=True)]
        b = [min(-(-y // c) * c, sizes[dim]) for y, c, dim in zip(hi, chunks, dims, strict=True)]
        grid = [range(x // c, -(-y // c)) for x, y, c in zip(a, b, chunks, strict=True)]
        keys = {idx: ("chunk", name, idx) for idx in itertools.product(*grid)}
        box = np.empty([y - x for x, y in zip(a, b, strict=True)])
        if all(key in self._cache for key in keys.values()):
            for idx, key in keys.items():
                self._cache.move_to_end(key)
                part = self._cache[key]
                at = tuple(
                    slice(j * c - x, j * c - x + n)
                    for j, c, x, n in zip(idx, chunks, a, part.shape, strict=True)
                )
                box[at] = part
            return box, a
        sel = {dim: slice(x, y) for dim, x, y in zip(dims, a, b, strict=True)}
        box[...] = np.asarray(var.isel(sel).transpose(*dims).values, dtype=np.float64)
        for idx, key in keys.items():
            at = tuple(
                slice(j * c - x, min((j + 1) * c, y) - x)
                for j, c, x, y in zip(idx, chunks, a, b, strict=True)
            )
            self._keep(key, box[at].copy())
        return box, a

    def _keep(self, key, value) -> None:
        self._cache[key] = value
        self._size[0] += value.nbytes
        while self._size[0] > CACHE_BYTES and len(self._cache) > 1:
            self._size[0] -= self._cache.popitem(last=False)[1].nbytes

    def _interpolate(self, name: str, host: list[np.ndarray]) -> np.ndarray:
        ds = _open(self.url, self.storage_options)
        dims = AXES[: self.d]
        idx, wts, lo, hi = [], [], [], []
        for k, c in enumerate(host):
            grid = self._cache.get(("grid", k))
            if grid is None:
                grid = np.asarray(ds[dims[k]].values, dtype=np.float64)
                self._keep(("grid", k), grid)
            i = np.clip(np.searchsorted(grid, c, side="right") - 1, 0, grid.size - 2)
            w = np.clip((c - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)
            idx.append(i)
            wts.append(w)
            lo.append(int(i.min()))
            hi.append(int(i.max()) + 2)
        box, at0 = self._region(name, ds[name], dims, lo, hi)
        if all(_along(c, k) for k, c in enumerate(host)):
            # a tensor grid of points (what the solver asks for): one axis at a time,
            # 2 d gathers of slabs instead of 2^d gathers of the whole output
            out = box
            for k in range(self.d):
                i, w = idx[k].reshape(-1) - at0[k], wts[k].reshape(-1)
                w = w.reshape([-1 if j == k else 1 for j in range(self.d)])
                a, b = np.take(out, i, axis=k), np.take(out, i + 1, axis=k)
                out = a * (1.0 - w) + b * w
            return np.ascontiguousarray(out)
        out = 0.0
        for corner in itertools.product((0, 1), repeat=self.d):
            at = tuple(i - a + c for i, a, c in zip(idx, at0, corner, strict=True))
            weight = 1.0
            for w, c in zip(wts, corner, strict=True):
                weight = weight * (w if c else 1.0 - w)
            out = out + weight * box[at]
        return np.ascontiguousarray(out)


def _along(c: np.ndarray, k: int) -> bool:
    """Whether coordinate array ``c`` varies along axis ``k`` only (shape
    ``(1, .., n, .., 1)``), as the coordinates of a grid block do."""
    return all(n == 1 for j, n in enumerate(c.shape) if j != k) and c.ndim > k


def check_dataset(url: str, d: int, options: dict | None = None) -> tuple:
    """Check a coefficient dataset; return the box its coordinates cover.

    Raises
    ------
    ValueError
        One line naming the variable or coordinate and what is wrong: it cannot be
        opened, a variable is missing or has other dimensions, a variable or coordinate
        holds other than real numbers (complex, strings; :data:`REAL_KINDS`), a
        coordinate is not 1-D and increasing, a value is NaN or infinite, an ``alpha`` is
        not positive.
    """
    import xarray as xr

    kwargs = {"storage_options": dict(options)} if options else {}
    try:
        ds = xr.open_zarr(url, consolidated=False, **kwargs)
    except Exception as exc:  # any backend's "not a store": one line
        raise ValueError(f"cannot open it as a Zarr store ({type(exc).__name__})") from None
    dims = AXES[:d]
    extent = []
    for a in dims:
        if a not in ds.coords:
            raise ValueError(f"coordinate '{a}' is missing (needs {', '.join(dims)})")
        if ds[a].dtype.kind not in REAL_KINDS:
            raise ValueError(f"coordinate '{a}' has dtype {ds[a].dtype} (needs real numbers)")
        c = np.asarray(ds[a].values, dtype=np.float64)
        if c.ndim != 1 or c.size < 2 or not np.all(np.diff(c) > 0):
            raise ValueError(f"coordinate '{a}' must be 1-D, increasing, at least 2 values")
        extent.append((float(c[0]), float(c[-1])))
    for name in variables(d):
        if name not in ds.data_vars:
            raise ValueError(f"variable '{name}' is missing (needs {', '.join(variables(d))})")
        var = ds[name]
        if set(var.dims) != set(dims) or var.ndim != d:
            raise ValueError(f"variable '{name}' has dims {var.dims}, needs {dims}")
        if var.dtype.kind not in REAL_KINDS:
            raise ValueError(f"variable '{name}' has dtype {var.dtype} (needs real numbers)")
        # a reduction per chunk (dask): the whole variable is never in memory
        if bool((~np.isfinite(var)).any()):
            raise ValueError(f"variable '{name}' has NaN or infinite values")
        if name.startswith("alpha_") and bool((var <= 0).any()):
            raise ValueError(f"variable '{name}' must be > 0 everywhere (diffusion)")
    return tuple(extent)


@dataclass(frozen=True)
class FactoryProblem:
    """The user's problem from ``factory(**params)``, built where it is used.

    What travels to the workers (and through a Dask scheduler, which unpickles task
    graphs but does not have the user's code) is the import path and the arguments; each
    process builds the object once, from the module the executor shipped to it.

    Parameters
    ----------
    target : str
        ``package.module:name`` of the factory.
    params : tuple of (str, value)
        Its keyword arguments.
    """

    target: str
    params: tuple = ()
    kind: str = "custom"
    _built: list = field(default_factory=list, compare=False, hash=False, repr=False)

    def __getstate__(self):
        return {"target": self.target, "params": self.params}

    def __setstate__(self, state):
        object.__setattr__(self, "target", state["target"])
        object.__setattr__(self, "params", state["params"])
        object.__setattr__(self, "kind", "custom")
        object.__setattr__(self, "_built", [])

    @property
    def obj(self):
        """The object the factory returned (built on first use in this process)."""
        if not self._built:
            from ..imports import resolve

            factory = resolve(self.target, field="problem.factory")
            self._built.append(factory(**dict(self.params)))
        return self._built[0]

    @property
    def constant_coefficients(self) -> bool:
        return bool(getattr(self.obj, "constant_coefficients", False))

    @property
    def has_exact(self) -> bool:
        return callable(getattr(self.obj, "exact", None))

    def units(self) -> dict[str, str]:
        """What the user's object says with ``units()`` (optional): ``{"u": …, "x": …}``."""
        say = getattr(self.obj, "units", None)
        return dict(say()) if callable(say) else {}

    def alpha_k(self, k: int, coords):
        return self._checked(f"alpha_k({k}, coords)", self.obj.alpha_k(k, coords), coords)

    def beta_k(self, k: int, coords):
        return self._checked(f"beta_k({k}, coords)", self.obj.beta_k(k, coords), coords)

    def rhs(self, coords):
        return self._checked("rhs(coords)", self.obj.rhs(coords), coords)

    def boundary(self, coords):
        return self._checked("boundary(coords)", self.obj.boundary(coords), coords)

    def exact(self, coords):
        return self._checked("exact(coords)", self.obj.exact(coords), coords)

    def _checked(self, name: str, value, coords):
        """``value``, what method ``name`` gave at ``coords``, once it is real, finite
        and, for an ``alpha_k``, positive: the preflight samples a few points of the box
        only, and a value it missed (NaN in one corner) would otherwise reach a box
        solver as a singular factorisation.

        Raises
        ------
        ValueError
            ``problem.factory TARGET: METHOD gave ... at x in [a, b], ...``: the method
            and the region (physical coordinates) of the points at fault.
        """
        from array_api_compat import array_namespace, is_array_api_obj
        from tilegraph.tasks.devices import to_host

        v = value if is_array_api_obj(value) else np.asarray(value)
        xp = array_namespace(v)
        where = f"problem.factory {self.target}: {name}"
        if not xp.isdtype(v.dtype, ("bool", "integral", "real floating")):
            raise ValueError(f"{where} returned {v.dtype} values (needs real numbers)")
        finite = xp.isfinite(v)
        if not bool(xp.all(finite)):
            bad = ~np.asarray(to_host(finite), dtype=bool)
            raise ValueError(f"{where} gave NaN or infinite values at {_region(bad, coords)}")
        if name.startswith("alpha") and not bool(xp.all(v > 0)):
            bad = np.asarray(to_host(v <= 0), dtype=bool)
            raise ValueError(
                f"{where} gave values <= 0 (diffusion must be > 0) at {_region(bad, coords)}"
            )
        return value


def _region(bad: np.ndarray, coords) -> str:
    """``"x in [a, b], y in [c, d]"``: the box around the points where ``bad`` is True
    (``bad`` broadcasts against ``coords``, physical coordinates)."""
    from tilegraph.tasks.devices import to_host

    host = [np.asarray(to_host(c), dtype=np.float64) for c in coords]
    shape = np.broadcast_shapes(bad.shape, *(c.shape for c in host))
    mask = np.broadcast_to(bad, shape)
    parts = []
    for axis, c in zip(AXES, host, strict=False):
        at = np.broadcast_to(c, shape)[mask]
        parts.append(f"{axis} in [{at.min():.4g}, {at.max():.4g}]")
    return ", ".join(parts)


__all__ = ["REAL_KINDS", "DatasetProblem", "FactoryProblem", "check_dataset", "variables"]
