"""A hyperparameter study on data shipped with scikit-learn (issue 20), in one run.

scikit-learn's diabetes data (442 patients, 10 standardised features and an intercept
column) split by a seeded partition into ``--blocks`` blocks ("clinics"), each split 70/30
into training and validation rows, written as a Zarr group the way a user would give
it (``problem.kind=dataset``). The question: one ridge penalty per feature, shared by all
clinics, that minimises the mean validation loss ``F(x) = mean_i 1/(2 m_i)
|V_i w_i(x) - u_i|^2`` (``x = log lambda``). Side by side:

* tilegraph BSVRB v2 and F2SA (``auto_steps``, ``--iters`` iterations, I = blocks / 2,
  batch 16, ``local:2``): the validation loss F reached and the wall time;
* L-BFGS-B on the exact hypergradient (linear solves on all data, in this process): the
  optimum of the same problem;
* what a user of scikit-learn would do instead: per-clinic ``RidgeCV`` (one penalty per
  clinic chosen by its efficient leave-one-out on the clinic's training rows), and
  per-clinic grid search of one penalty on the clinic's validation rows (a lower bound for
  any per-clinic scalar penalty, since it is chosen on the data it is scored on).

Prints one table (mean validation loss, wall seconds; "–" for a row that is not timed)
and writes ``benchmarks/results/bilevel_study.json`` (``--out``).

    python benchmarks/bilevel_study.py [--blocks 8] [--iters 1500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from argtypes import cluster_spec

ROOT = Path(__file__).resolve().parents[1]
OPT = "L-BFGS-B on the exact hypergradient, in tilegraph's box (optimum)"
RESULTS = ROOT / "benchmarks" / "results" / "bilevel_study.json"
#: the diabetes data's rows, and the fewest a clinic may have (split 70/30)
N_PATIENTS, MIN_ROWS = 442, 10


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {value})")
        return value

    return parse


def make_blocks(n_blocks: int, seed: int) -> list[dict]:
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    X = np.hstack([X, np.ones((X.shape[0], 1))])
    y = (y - y.mean()) / y.std()
    order = np.random.default_rng(seed).permutation(len(y))
    blocks = []
    for part in np.array_split(order, n_blocks):
        k = int(0.7 * len(part))
        tr, va = part[:k], part[k:]
        blocks.append({"X_train": X[tr], "y_train": y[tr], "X_val": X[va], "y_val": y[va]})
    return blocks


def write_group(path: str, blocks: list[dict]) -> None:
    import zarr

    root = zarr.open_group(path, mode="w")
    for b, arrays in enumerate(blocks):
        g = root.create_group(f"clinic{b:02d}")
        for k, a in arrays.items():
            g.create_array(k, data=a)


def exact(blocks, x):
    """F(x) and its gradient (ridge, lambda = exp(x)), by linear solves."""
    lam = np.exp(x)
    F, g = 0.0, np.zeros_like(x)
    for b in blocks:
        X, y, V, u = b["X_train"], b["y_train"], b["X_val"], b["y_val"]
        H = X.T @ X / len(y) + np.diag(lam)
        w = np.linalg.solve(H, X.T @ y / len(y))
        r = V @ w - u
        F += 0.5 * r @ r / len(u)
        g -= lam * w * np.linalg.solve(H, V.T @ r / len(u))
    return F / len(blocks), g / len(blocks)


def sklearn_baselines(blocks) -> dict:
    """Per clinic, as a scikit-learn user would: the intercept fitted and not penalised
    (``fit_intercept=True`` on the features without the ones column)."""
    from sklearn.linear_model import Ridge, RidgeCV

    alphas = np.logspace(-4, 4, 81)
    out = {}
    t0 = time.perf_counter()
    losses = []
    for b in blocks:
        X, V = b["X_train"][:, :-1], b["X_val"][:, :-1]
        m = RidgeCV(alphas=alphas).fit(X, b["y_train"])
        r = m.predict(V) - b["y_val"]
        losses.append(0.5 * np.mean(r * r))
    out["RidgeCV per clinic (LOO on training rows)"] = (float(np.mean(losses)),
                                                       time.perf_counter() - t0)  # fmt: skip
    t0 = time.perf_counter()
    losses = []
    for b in blocks:
        X, V = b["X_train"][:, :-1], b["X_val"][:, :-1]
        best = np.inf
        for a in alphas:
            r = Ridge(alpha=a).fit(X, b["y_train"]).predict(V) - b["y_val"]
            best = min(best, 0.5 * np.mean(r * r))
        losses.append(best)
    out["grid search per clinic (on its validation rows)"] = (float(np.mean(losses)),
                                                             time.perf_counter() - t0)  # fmt: skip
    return out


def main(argv=None) -> int:
    import tilegraph
    from scipy.optimize import minimize
    from tilegraph import cluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--blocks",
        type=int_at_least(1),
        default=8,
        help=f"clinics the {N_PATIENTS} patients are split into, at most "
        f"{N_PATIENTS // MIN_ROWS} ({MIN_ROWS} patients each) (%(default)s)",
    )
    ap.add_argument(
        "--iters", type=int_at_least(1), default=1500, help="tilegraph iterations (%(default)s)"
    )
    ap.add_argument(
        "--seed", type=int_at_least(0), default=0, help="seed of the partition (%(default)s)"
    )
    ap.add_argument(
        "--cluster", type=cluster_spec, default="local:2", help="tilegraph's (%(default)s)"
    )
    ap.add_argument("--out", default=str(RESULTS), help="JSON written (%(default)s)")
    args = ap.parse_args(argv)
    if args.blocks > N_PATIENTS // MIN_ROWS:
        ap.error(
            f"argument --blocks: at most {N_PATIENTS // MIN_ROWS} ({MIN_ROWS} patients per "
            f"clinic; got {args.blocks})"
        )

    blocks = make_blocks(args.blocks, args.seed)
    rows = {}
    x0 = np.zeros(blocks[0]["X_train"].shape[1])
    rows["F at x = 0 (lambda = 1 for every feature)"] = (exact(blocks, x0)[0], None)
    t0 = time.perf_counter()
    res = minimize(lambda x: exact(blocks, x), x0, jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12})  # fmt: skip
    rows["L-BFGS-B on the exact hypergradient, unbounded"] = (
        float(res.fun),
        time.perf_counter() - t0,
    )
    # the box tilegraph's auto_steps choose for problem.kind=dataset: -20 <= x <= log(4 L_A)
    L_A = max(np.linalg.eigvalsh(b["X_train"].T @ b["X_train"] / len(b["y_train"])).max()
              for b in blocks)  # fmt: skip
    t0 = time.perf_counter()
    res = minimize(lambda x: exact(blocks, x), x0, jac=True, method="L-BFGS-B",
                   bounds=[(-20, np.log(4 * L_A))] * len(x0), options={"gtol": 1e-12})  # fmt: skip
    rows[OPT] = (float(res.fun), time.perf_counter() - t0)
    rows.update(sklearn_baselines(blocks))
    with tempfile.TemporaryDirectory() as tmp, cluster.connect(args.cluster) as ex:
        path = f"{tmp}/clinics.zarr"
        write_group(path, blocks)
        for method in ("bsvrb-v2", "f2sa"):
            sets = ["problem.kind=dataset", f"problem.dataset={path}", f"method={method}",
                    f"blocks_per_iter={max(1, args.blocks // 2)}", "batch=16",
                    f"max_iter={args.iters}", "tol=null", f"eval_every={args.iters}"]  # fmt: skip
            t0 = time.perf_counter()
            run = tilegraph.run("bilevel", sets=sets, cluster=ex, store=f"{tmp}/runs")
            print(method, "auto_steps:", run.metrics.get("auto_steps"))
            rows[f"tilegraph {method}, {args.iters} iterations, {args.cluster}"] = (
                float(run.metrics["upper_objective"]),
                time.perf_counter() - t0,
            )
    best = rows[OPT][0]
    width = max(len(k) for k in rows)
    print(f"\ndiabetes in {args.blocks} clinics: mean validation loss 1/2 MSE (standardised y)")
    print(f"{'method':{width}}  {'loss':>8}  {'vs optimum':>10}  {'wall s':>7}")
    for k, (loss, wall) in rows.items():
        shown = "–" if wall is None else f"{wall:7.2f}"  # not timed
        print(f"{k:{width}}  {loss:8.5f}  {loss / best:10.4f}  {shown:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
