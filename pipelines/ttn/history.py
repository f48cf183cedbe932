"""What a ttn run stores: the history of a study (its schema), the final network, the
convergence table; and the network as a checkpoint's arrays."""

from __future__ import annotations

import numpy as np


def history_row(integ, n: int, h: float, rejected: int, step_s: float, exact=None) -> dict:
    """The history row of step ``n`` (time ``n h``) of the driver ``integ``'s state.

    Parameters
    ----------
    integ : BUGDriver
    rejected : int
        Times the step was redone.
    step_s : float
        Wall seconds of the step.
    exact : ExactSolution, optional
        Adds ``error``, the distance to the exact state.
    """
    from tilegraph.tasks.ttn import state as st

    every = integ.cfg.observe_every
    obs = integ.observe(observables=n % every == 0)
    ranks = integ.ranks()
    r = {
        "step": n,
        "time": n * h,
        "norm": obs["norm"],
        "energy": obs["energy"],
        "magnetization": obs["magnetization"],
        "ranks": ranks,
        "max_rank": max(ranks),
        "mean_rank": float(np.mean(ranks)),
        "rejected": rejected,
        "step_s": step_s,
    }
    if "observables" in obs:
        r["observables"] = obs["observables"]
    if exact is not None:
        y = st.to_dense(integ.tree, integ.full_state())
        ref = exact.at(n * h)
        r["error"] = float(np.linalg.norm(y - ref))
        if "observables" in obs:
            nan = complex("nan+nanj")
            r["observables_exact"] = (
                exact.observe(ref) if n % every == 0 else [nan] * len(obs["observables"])
            )
    return r


def write_history(
    store, name: str, rows: list[dict], append: bool = False, observables=()
) -> None:
    """Write ``rows`` as dataset ``name`` (chunks of 256 steps), or append them to it."""
    ds = history_dataset(rows, observables)
    if append:
        ds = ds.drop_vars("observable", errors="ignore")
    if append:
        store.write_dataset(name, ds, mode="a", append_dim="time")
    else:
        chunks = {v: {"chunks": history_chunks(ds[v])} for v in ds.variables}
        store.write_dataset(name, ds, encoding=chunks)


def state_arrays(state) -> dict:
    """The TTN's node tensors by name ``node_<i>`` (a checkpoint's arrays)."""
    return {f"node_{i:03d}": np.asarray(a) for i, a in enumerate(state)}


def state_from(arrays: dict, n: int) -> list:
    """The ``n`` node tensors back from :func:`state_arrays`' mapping."""
    return [np.asarray(arrays[f"node_{i:03d}"], dtype=np.complex128) for i in range(n)]


def write_state(store, state) -> None:
    """The final TTN as arrays ``state/node_<i>`` (a result: checkpoints do not outlive
    a complete run)."""
    from tilegraph.tasks.devices import to_host

    for name, a in state_arrays(to_host(state)).items():
        a = np.asarray(a, dtype=np.complex128)
        ref = store.create_array(
            f"state/{name}",
            a.shape,
            a.shape,
            dtype="complex128",
            # names of its own: xarray opens the group as one Dataset of every node
            dimension_names=tuple(f"{name}_axis_{k}" for k in range(a.ndim)),
            fill_value=0j,
            attrs={
                "long_name": "final TTN node tensor (leaf basis or connecting tensor)",
                "units": "1",
            },
            overwrite=True,
        )
        ref.write((slice(None),) * a.ndim, a)


def history_dataset(rows: list[dict], observables=()):
    """The history rows (one per step: observables, ranks, step time) as a Dataset on
    ``time`` (and ``observable``: the operator strings of ``observables``)."""
    import xarray as xr

    def col(k):
        return np.asarray([r[k] for r in rows], dtype=np.float64)

    data = {
        "norm": ("time", col("norm"), {"units": "1", "long_name": "norm of the state"}),
        "energy": ("time", col("energy"), {"units": "energy", "long_name": "<H>"}),
        "magnetization": (
            ("time", "site"),
            np.asarray([r["magnetization"] for r in rows], dtype=np.float64),
            {"units": "1", "long_name": "<Sz_site>/S (NaN where the site is not a spin)"},
        ),
        "ranks": (
            ("time", "edge"),
            np.asarray([r["ranks"] for r in rows], dtype=np.int64),
            {"units": "1", "long_name": "bond rank of the edge above node edge+1"},
        ),
        "max_rank": (
            "time",
            col("max_rank").astype(np.int64),
            {"units": "1", "long_name": "largest bond rank of the tree"},
        ),
        "mean_rank": ("time", col("mean_rank"), {"units": "1", "long_name": "mean bond rank"}),
        "rejected": (
            "time",
            col("rejected").astype(np.int64),
            {"units": "1", "long_name": "times the step was redone (step 1: over its ramp)"},
        ),
        "step_s": (
            "time",
            col("step_s"),
            {"units": "s", "long_name": "wall time of the step (step 1: its whole ramp)"},
        ),
    }
    for name, what in (("observables", "<O>"), ("observables_exact", "<O> of expm(-i t H) y0")):
        if name in rows[0]:
            data[name] = (
                ("time", "observable"),
                np.asarray([r[name] for r in rows], dtype=np.complex128),
                {"units": "1", "long_name": f"{what}, every observe_every steps (NaN between)"},
            )
    if "error" in rows[0]:
        data["error"] = (
            "time",
            col("error"),
            {"units": "1", "long_name": "||y - expm(-i t H) y0||"},
        )
    n_sites = np.shape(rows[0]["magnetization"])[0]
    n_edges = np.shape(rows[0]["ranks"])[0]
    return xr.Dataset(
        data,
        coords={
            "time": (
                "time",
                col("time"),
                {"units": "1/energy", "long_name": "time t (hbar = 1: 1 / the energy unit of H)"},
            ),
            "step": ("time", col("step").astype(np.int64), {"units": "1", "long_name": "step"}),
            "site": ("site", np.arange(n_sites), {"units": "1", "long_name": "site (leaf)"}),
            "edge": (
                "edge",
                np.arange(n_edges),
                {"units": "1", "long_name": "edge above node edge+1"},
            ),
            **({"observable": ("observable", list(observables))} if "observables" in data else {}),
        },
    )


def history_chunks(var) -> tuple[int, ...]:
    """Chunks of a history variable: 256 steps along time, whole along other dims."""
    return tuple(256 if dim == "time" else n for dim, n in zip(var.dims, var.shape, strict=True))


def history_intact(store, name: str, upto: int, h: float) -> bool:
    """Whether dataset ``name`` holds the rows of steps ``0 .. upto`` (one per step, at
    times ``step * h``), as a checkpoint at step ``upto`` needs.

    A kill while rows were appended can leave the arrays resized with their new rows
    unwritten, which read as the fill value (step 0): a resume must not take those for
    the checkpoint's rows (it restarted its step counter at 0 from the checkpoint's
    state and integrated past ``T``).
    """
    try:
        steps = store.dataset_variable(name, "step")
        times = store.dataset_variable(name, "time")
    except Exception:  # missing or unreadable
        return False
    n = upto + 1
    return (
        steps.size >= n
        and times.size >= n
        and np.array_equal(steps[:n], np.arange(n))
        and np.allclose(times[:n], np.arange(n) * h, rtol=1e-12, atol=0.0)
    )


def resume_rows(store, name: str, upto: int) -> list[dict]:
    """History rows of ``name`` up to step ``upto`` (later ones came after the checkpoint,
    and may be cut short in some arrays by a kill while they were appended: the arrays
    are cut back to the checkpoint's rows first). See :func:`history_intact`."""
    store.truncate_dataset(name, "time", upto + 1)
    ds = store.open_dataset(name).load()
    rows = []
    for i in range(ds.sizes["time"]):
        r = {k: ds[k].values[i].tolist() for k in ds.data_vars}
        r["step"] = int(ds.step.values[i])
        r["time"] = float(ds.time.values[i])
        rows.append(r)
    return rows


def write_convergence(store, names, hs):
    """Dataset ``convergence``: the error at ``T`` against the exact solution per step
    size ``h``."""
    import xarray as xr

    err = [float(store.open_dataset(n)["error"].values[-1]) for n in names]
    ds = xr.Dataset(
        {"error": ("h", np.asarray(err), {"units": "1", "long_name": "error at T vs expm"})},
        coords={"h": ("h", np.asarray(hs), {"units": "1/energy"})},
    )
    store.write_dataset("convergence", ds)
    return ds
