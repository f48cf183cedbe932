"""ttn on the user's own system: site types, Hamiltonians as terms, start states and
observables, checked against dense references built here with ``np.kron``."""

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import tilegraph as tg
import xarray as xr
import yaml
from helpers import last_json, tilegraph
from tilegraph.pipelines.ttn.config import TTNConfig
from tilegraph.tasks.ttn import integrator, operators
from tilegraph.tasks.ttn import state as st
from tilegraph.tasks.ttn.sites import parse_site
from tilegraph.tasks.ttn.terms import check_hermitian, from_terms
from tilegraph.tasks.ttn.trees import make_tree


def kron_all(mats):
    out = np.ones((1, 1), dtype=complex)
    for m in mats:
        out = np.kron(out, m)
    return out


def dense(dims, terms):
    """``sum c (x)_s A_s`` from ``[(c, {site: matrix})]``, built independently."""
    H = np.zeros((int(np.prod(dims)),) * 2, dtype=complex)
    for c, fac in terms:
        H += c * kron_all([fac.get(s, np.eye(n)) for s, n in enumerate(dims)])
    return H


def test_spin_operators_follow_the_documented_conventions():
    half, one = parse_site("S=1/2"), parse_site("S=1")
    np.testing.assert_array_equal(half.op("Sz"), np.diag([0.5, -0.5]))
    np.testing.assert_array_equal(half.op("Z"), 2 * half.op("Sz"))
    for t in (half, one, parse_site("S=3/2")):
        S = float(t.spin)
        Sx, Sy, Sz = t.op("Sx"), t.op("Sy"), t.op("Sz")
        np.testing.assert_allclose(Sx @ Sy - Sy @ Sx, 1j * Sz, atol=1e-14)  # [Sx, Sy] = i Sz
        np.testing.assert_allclose(Sx @ Sx + Sy @ Sy + Sz @ Sz, S * (S + 1) * np.eye(t.dim))
        np.testing.assert_allclose(t.op("S+"), Sx + 1j * Sy, atol=1e-15)
        assert np.diag(Sz)[0] == S  # basis m = +S first
    b = parse_site("Boson:3")
    np.testing.assert_allclose(b.op("B") @ b.op("Bdag") - b.op("Bdag") @ b.op("B"),
                               np.diag([1, 1, 1, -3]))  # fmt: skip
    np.testing.assert_array_equal(b.op("N"), np.diag([0, 1, 2, 3]))
    np.testing.assert_array_equal(parse_site("Qudit:4").op("E1_3")[1, 3], 1)


def test_builtin_models_written_as_terms_are_the_same_operator():
    """The presets' models, now written as terms, give the operators of the builders they
    replace entry for entry (so the same bits through the integrators)."""
    for kind in ("tfi", "lr-ising", "xxz"):
        cfg = TTNConfig(d=9, model={"kind": kind})
        new = cfg.make_operator()
        old = operators.make_operator(kind, 9, **cfg.model.params_of_builtin())
        assert new.dims == old.dims and new.coefs == old.coefs
        assert len(new.keys) == len(old.keys)
        for kn, ko in zip(new.keys, old.keys, strict=True):
            assert [s for s, _ in kn] == [s for s, _ in ko]
            for (_, a), (_, b) in zip(kn, ko, strict=True):
                np.testing.assert_array_equal(new.ops[a], old.ops[b])


def random_system(seed):
    """Mixed sites (dims 2, 3, 4), random complex couplings on pairs and triples written
    with transition operators E<j>_<k>, each with its Hermitian partner."""
    rng = np.random.default_rng(seed)
    names = ["S=1/2", "S=1", "Qudit:4", "Boson:2", "S=1/2"]
    types = [parse_site(n) for n in names]
    dims = [t.dim for t in types]
    terms, ref = [], []
    for n_sites in (1, 2, 2, 2, 3, 3):
        sites = sorted(rng.choice(len(dims), n_sites, replace=False).tolist())
        c = complex(rng.normal(), rng.normal())
        jk = [tuple(rng.integers(0, dims[s], 2)) for s in sites]
        text = " ".join(f"E{j}_{k} {s}" for (j, k), s in zip(jk, sites, strict=True))
        adj = " ".join(f"E{k}_{j} {s}" for (j, k), s in zip(jk, sites, strict=True))
        terms += [[f"{c.real}{c.imag:+}j", text], [[c.real, -c.imag], adj]]
        for coef, swap in ((c, False), (c.conjugate(), True)):
            fac = {}
            for (j, k), s in zip(jk, sites, strict=True):
                m = np.zeros((dims[s], dims[s]))
                m[(k, j) if swap else (j, k)] = 1
                fac[s] = m
            ref.append((coef, fac))
    vecs = [rng.normal(size=n) + 1j * rng.normal(size=n) for n in dims]
    return types, dims, terms, dense(dims, ref), vecs


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_random_sums_of_products_converge_to_expm(method):
    types, dims, terms, H, vecs = random_system(4)
    op = from_terms(types, terms)
    check_hermitian(op)  # every term came with its partner
    np.testing.assert_allclose(operators.to_dense(op).toarray(), H, atol=1e-13)
    tree = make_tree("binary", len(dims))
    lay = integrator.OperatorLayout(tree, op)
    trunc = integrator.Truncation(1e-10, False, 2, 64)
    T = 0.4
    y0 = st.to_dense(tree, st.product_state(tree, vecs, rank=2))
    ref = sla.expm_multiply(-1j * T * H, y0)
    E0 = np.vdot(y0, H @ y0).real
    errs = []
    for h in (0.04, 0.02, 0.01):
        s = st.product_state(tree, vecs, rank=2)
        for _ in range(round(T / h)):
            s, _ = integrator.step(lay, s, h, trunc, method=method)
            y = st.to_dense(tree, s)
            if method == "sequential":  # conserves norm and energy
                assert abs(np.linalg.norm(y) - 1) < 1e-8
                assert abs(np.vdot(y, H @ y).real - E0) < 1e-8
        errs.append(np.linalg.norm(y - ref))
    assert errs[-1] < 5e-2
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 0.8), (errs, rates)  # first order or better


def test_non_hermitian_terms_name_the_term_and_can_be_allowed():
    types = [parse_site("Boson:3")] * 3
    op = from_terms(types, [[1.0, "Bdag 0 B 1"], [1.0, "B 0 Bdag 1"], [0.5, "Bdag 1 B 2"]])
    with pytest.raises(ValueError, match=r'\[0\.5, "Bdag 1 B 2"\]'):
        check_hermitian(op)
    cfg = TTNConfig(
        d=3,
        sites="Boson:3",
        model={"kind": "terms", "terms": [[0.5, "Bdag 1 B 2"]], "hermitian": False},  # fmt: skip
        exact_reference=True,
    )
    assert cfg.make_operator().coefs == (0.5 + 0j,)


SPIN1 = {
    "d": 4,
    "sites": "S=1",
    "model": {
        "kind": "terms",
        "terms": [
            t
            for i in range(3)
            for t in (
                [0.5, f"S+ {i} S- {i + 1}"],
                [0.5, f"S- {i} S+ {i + 1}"],
                [1.0, f"Sz {i} Sz {i + 1}"],
            )
        ]
        + [[0.3, f"Sz {i} Sz {i}"] for i in range(4)]
        + [[0.2, f"Sx {i}"] for i in range(4)],
    },  # fmt: skip
    "start": ["up", "down", [1, 1, 0], 1],
    "observables": ["Sz 0", "Sz 1 Sz 2", "S+ 3"],
}
BOSE_HUBBARD = {
    "d": 4,
    "sites": "Boson:3",
    "model": {
        "kind": "terms",
        "terms": [
            t
            for i in range(3)
            for t in ([-1.0, f"Bdag {i} B {i + 1}"], [-1.0, f"B {i} Bdag {i + 1}"])
        ]
        + [[2.0, f"N {i} N {i}"] for i in range(4)]
        + [[-2.0, f"N {i}"] for i in range(4)],
    },  # fmt: skip
    "start": [[0.6, 0.8, 0, 0], [1, 0.5, 0.2, 0], [0.6, 0.8, 0, 0], [1, 0.3, 0, 0]],
    "observables": ["N 0", "N 1 N 2", "Bdag 0 B 1"],
}


def dense_observables(cfg_dict, T):
    """The system of a config, built here: ``<O>(T)`` by ``expm_multiply``."""
    cfg = TTNConfig(**cfg_dict)
    types = cfg.site_types()
    dims = [t.dim for t in types]

    def fac(text):
        out = {}
        toks = text.split()
        for name, s in zip(toks[::2], toks[1::2], strict=True):
            m = types[int(s)].op(name)
            out[int(s)] = out[int(s)] @ m if int(s) in out else m
        return out

    H = dense(dims, [(complex(c), fac(t)) for c, t in cfg_dict["model"]["terms"]])
    y0 = kron_all([v[:, None] for v in cfg.start_vectors()])[:, 0]
    y = sla.expm_multiply(-1j * T * H, y0)
    return [np.vdot(y, dense(dims, [(1.0, fac(o))]) @ y) for o in cfg_dict["observables"]]


@pytest.mark.parametrize("system", [SPIN1, BOSE_HUBBARD], ids=["spin-1", "bose-hubbard"])
def test_user_systems_from_yaml_record_observables(tmp_path, system):
    cfg = {**system, "T": 0.3, "h": 0.01, "r_max": 32, "theta": 1e-10, "observe_every": 5}
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tilegraph(
        "run", "ttn", "--config", str(path), "--set", "method=sequential",
        "--cluster", "sync", "--store", str(tmp_path / "runs"), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = last_json(run.stdout)
    hist = xr.open_zarr(res["path"] + "/history", consolidated=False).load()
    assert list(hist.observable.values) == system["observables"]
    assert hist.observables.dtype == np.complex128
    recorded = ~np.isnan(hist.observables.values[:, 0].real)
    np.testing.assert_array_equal(np.nonzero(recorded)[0], np.arange(0, 31, 5))
    want = dense_observables(system, 0.3)
    np.testing.assert_allclose(hist.observables.values[-1], want, atol=2e-3)
    assert res["metrics"]["final_error_vs_exact"] < 2e-2
    assert (tmp_path / "runs" / "ttn").exists()


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["model.kind=terms", "model.terms=[[1.0, 'Q 0']]"], "'Q' is not an operator"),
        (["model.kind=terms", "model.terms=[[1.0, 'Sz 9']]"], "site 9 out of range"),
        (["model.kind=terms", "sites=S=1", "model.terms=[[1.0, 'X 0']]"], "of S=1 sites"),
        (["model.kind=terms", "model.terms=[[1.0, 'S+ 0 S- 1']]"], '[1, "S+ 0 S- 1"]'),
        (["sites=Spin:1"], "unknown site type"),
        (["observables=['Sz 0', 'N 1']"], "observables[1]"),
    ],
)
def test_bad_terms_exit_2_naming_the_term(tmp_path, sets, needle):
    args = [a for s in sets for a in ("--set", s)]
    run = tilegraph("run", "ttn", *args, "--cluster", "sync", "--store", str(tmp_path))
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not any(tmp_path.iterdir())


MATRIX_FACTORY = '''
import numpy as np


def coupled(q=5, seed=0):
    """Two q-level systems: H = A (x) 1 + 1 (x) A + g B (x) B, A and B random Hermitian."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(q, q)) + 1j * rng.normal(size=(q, q))
    N = rng.normal(size=(q, q))
    return {
        "ops": {"A": (M + M.conj().T) / 2, "Bm": (N + N.T) / 2},
        "terms": [[1.0, "A 0"], [1.0, "A 1"], [0.3, "Bm 0 Bm 1"]],
    }
'''


def test_matrix_case_is_a_config_qudits_on_a_tucker_tree(tmp_path):
    """Super-sites of any dimension (``Qudit:q``) on a Tucker tree, the Hamiltonian from
    a factory in the working directory: the observables follow the dense dynamics."""
    (tmp_path / "mymodel.py").write_text(MATRIX_FACTORY)
    q, T = 5, 0.5
    run = tilegraph(
        "run", "ttn", "--set", "d=2", "--set", f"sites=Qudit:{q}", "--set", "tree=tucker",
        "--set", "model.kind=custom", "--set", "model.factory=mymodel:coupled",
        "--set", f"model.params={{q: {q}}}", "--set", "start=[[1, 1, 0, 0, 0], 2]",
        "--set", "observables=['P0 0', 'P2 1', 'E0_1 0']", "--set", f"T={T}",
        "--set", "h=0.01", "--set", "r_max=5", "--set", "method=sequential",
        "--cluster", "sync", "--store", "runs", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = last_json(run.stdout)
    hist = xr.open_zarr(res["path"] + "/history", consolidated=False).load()
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodel", tmp_path / "mymodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got = mod.coupled(q)
    A, B = got["ops"]["A"], got["ops"]["Bm"]
    eye = np.eye(q)
    H = np.kron(A, eye) + np.kron(eye, A) + 0.3 * np.kron(B, B)
    y0 = np.kron(np.array([1, 1, 0, 0, 0]) / np.sqrt(2), eye[2])
    y = sla.expm_multiply(-1j * T * H, y0)
    P0, P2, E01 = np.diag(eye[0]), np.diag(eye[2]), np.outer(eye[0], eye[1])
    want = [np.vdot(y, O @ y) for O in (np.kron(P0, eye), np.kron(eye, P2), np.kron(E01, eye))]
    np.testing.assert_allclose(hist.observables.values[-1], want, atol=1e-6)


def test_h_list_counts_the_redone_steps_of_every_study(tmp_path):
    run = tilegraph(
        "run", "ttn", "--preset", "convergence", "--set", "reject=true",
        "--set", "h_list=[0.25, 0.125]", "--set", "T=0.5",
        "--cluster", "sync", "--store", str(tmp_path), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = last_json(run.stdout)
    per = [
        int((xr.open_zarr(f"{res['path']}/history_{k}", consolidated=False).rejected > 0).sum())
        for k in range(2)
    ]
    assert per[0] > 0 and res["metrics"]["rejected_steps"] == sum(per)


def test_the_first_step_makes_the_error_and_the_ramp_takes_it_off(tmp_path):
    """From a product start the error against expm is the first step's: halving only
    that step halves it (tilted Neel start of the isotropic chain: first order in the
    first step's size) or quarters it (a free start: second order), and the default
    ramp (8 halvings sequential, 4 parallel) takes it off, on the same time grid."""
    chain = ["d=6", "model.kind=xxz", "model.anisotropy=1", "T=1", "h=0.1"]
    cases = {  # start, method, order in the first step's size
        "tilted-neel": ("start=tilted-neel", "sequential", 1),
        "free": ("start=['+', 'up', 'down', '+', '-', 'up']", "sequential", 2),
    }

    def err(items, where):
        run = tg.run("ttn", sets=items, cluster="sync", store=tmp_path / where, progress=None)
        return run, run.metrics["final_error_vs_exact"]

    autos, zeros = {}, {}
    for name, (start, method, order) in cases.items():
        sets = [*chain, start, f"method={method}"]
        runs = [err([*sets, f"ramp={k}"], name) for k in (0, 1, 2)]
        e = [r[1] for r in runs]
        assert e[0] > 0.01, e
        first = xr.open_zarr(runs[0][0].url + "/history", consolidated=False).error.values[1]
        assert first > 0.9 * e[0], (first, e)  # without a ramp: made in step 1
        for k in (1, 2):
            assert e[k] / e[0] == pytest.approx(2.0 ** (-order * k), rel=0.1), e
        run, autos[name] = err(sets, name)  # ramp=auto: 8 halvings
        zeros[name] = e[0]
        assert autos[name] < e[0] / 200, (autos[name], e)
        # one history row per step of h: the ramp is inside the first
        hist = xr.open_zarr(run.url + "/history", consolidated=False)
        assert hist.sizes["time"] == 11 and run.metrics["steps"] == 10
        assert hist.error.values[1] < e[0] / 200  # made in step 1, and kept small
    # the parallel BUG on the quick preset (TFI, d = 8, all up): 4 halvings by default;
    # ramp=0 is the run before the ramp: the reference's independent matrix-case
    # calibration is about 1.4e-2 at h = 0.05, 3.5e-3 at 0.025 (order 2, made in the
    # first step, so the same at this T)
    q = ["d=8", "model.kind=tfi", "T=0.5", "r_max=16"]
    e0, e_auto = err([*q, "h=0.05", "ramp=0"], "tfi")[1], err([*q, "h=0.05"], "tfi")[1]
    e0_half = err([*q, "h=0.025", "ramp=0"], "tfi")[1]
    assert e0 == pytest.approx(1.4e-2, rel=0.1) and e_auto < e0 / 30, (e0, e_auto)
    assert e0_half == pytest.approx(3.5e-3, rel=0.1), e0_half
    # every study of a convergence study starts with its own ramp
    study = [*chain, cases["tilted-neel"][0], "method=sequential", "h_list=[0.1, 0.05]"]
    ramped = err(study, "study")[0]
    conv = xr.open_zarr(ramped.url + "/convergence", consolidated=False).error.values
    np.testing.assert_allclose(conv[0], autos["tilted-neel"], rtol=1e-10)
    assert conv[1] < conv[0] < zeros["tilted-neel"] / 200


def test_a_start_pinned_in_a_symmetry_sector_is_warned_about(tmp_path):
    """The isotropic Heisenberg chain from the tilted Neel state, an eigenstate of its
    mean field: with unit zero-weight directions the error stays O(1) under step
    refinement and the run says so; the default (padding=auto) takes random directions
    for this start and converges at first order in h (0.17 from expm at h = 0.1 with
    ramp=0; the default ramp takes 250x off that: see
    test_the_first_step_makes_the_error_and_the_ramp_takes_it_off)."""
    sets = ["d=6", "model.kind=xxz", "model.anisotropy=1", "start=tilted-neel",
            "method=sequential", "T=1", "h=0.1"]  # fmt: skip

    def ttn(items):
        run = tilegraph(
            "run", "ttn", *[a for s in items for a in ("--set", s)],
            "--cluster", "sync", "--store", str(tmp_path), "--json",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run, last_json(run.stdout)["metrics"]

    run, m = ttn([*sets, "padding=unit"])
    assert m["final_error_vs_exact"] > 0.5
    assert "warning: the error against the exact solution ended at" in run.stderr
    assert "warning: the start state is an eigenstate of its mean field" in run.stderr
    assert "set padding=random" in run.stderr
    assert len(m["warnings"]) == 2

    # the rest in this process (the CLI above shows how warnings are printed)
    def metrics(items):
        run = tg.run("ttn", sets=items, cluster="sync", store=tmp_path / "api", progress=None)
        return run.metrics

    errs = []
    for h in ("0.1", "0.05"):
        m = metrics([*sets[:6], f"h={h}"])
        assert "padding=auto took random zero-weight directions" in m["warnings"][0]
        errs.append(m["final_error_vs_exact"])
    assert errs[0] < 2e-3 and 0.4 < errs[1] / errs[0] < 0.6, errs
    # without an exact reference (any d) the start itself is recognised
    m = metrics(["d=40", "exact_reference=false", "T=0.1", *sets[1:5]])
    assert "the start state is an eigenstate of its mean field" in m["warnings"][0]
    # a free start of the same chain is not warned about (and keeps unit directions)
    sets[3] = "start=['+', 'up', 'down', '+', '-', 'up']"
    m = metrics(sets)
    assert not m.get("warnings") and m["final_error_vs_exact"] < 0.1


def test_start_states_from_a_factory(tmp_path):
    (tmp_path / "mystart.py").write_text(
        "def start(d):\n    return [[1, 0] if i % 3 else [0.6, 0.8] for i in range(d)]\n"
    )
    run = tilegraph(
        "run", "ttn", "--set", "d=6", "--set", "start_factory=mystart:start", "--set", "T=0.1",
        "--cluster", "sync", "--store", "runs", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    hist = xr.open_zarr(last_json(run.stdout)["path"] + "/history", consolidated=False)
    want = [1.0 if i % 3 else 0.6**2 - 0.8**2 for i in range(6)]  # <Z> of each start
    np.testing.assert_allclose(hist.magnetization.values[0], want, atol=1e-14)


def test_an_operator_from_terms_is_built_once_per_process():
    """Validating, estimating and running a config each ask for its operator: terms are
    parsed and checked once, and a different model gets its own."""
    terms = [[1.0, "Sz 0 Sz 1"], [0.5, "X 2"], [0.25, "Sz 1 Sz 3"]]
    a = TTNConfig(d=4, model={"kind": "terms", "terms": terms})
    b = TTNConfig(d=4, model={"kind": "terms", "terms": terms})
    assert a.make_operator() is b.make_operator()
    other = TTNConfig(d=4, model={"kind": "terms", "terms": [*terms, [0.5, "X 3"]]})
    assert other.make_operator() is not a.make_operator()
    assert len(other.make_operator().keys) == len(a.make_operator().keys) + 1


def test_terms_inside_a_subtree_are_summed_into_one_key_per_node():
    """The tree operator's compression: a node keeps one summed key for the terms inside
    its subtree (checked against the dense sum of those terms on its basis) and one key per
    restriction of a term reaching out; the integrators give the same states as with one
    key per restricted term (``compress=False``), on all-to-all couplings and on a random
    system with triples, a constant term and a non-binary tree."""
    d = 12
    tree = make_tree("binary", d)
    op = operators.long_range_ising(d)
    lay = integrator.OperatorLayout(tree, op)
    plain = integrator.OperatorLayout(tree, op, compress=False)
    c = tree.children[0][0]
    m = len(tree.leaves[c])  # 6 sites: terms X_i, n_i, n_i n_j (15 pairs inside)
    assert len(plain.keys[c]) == 2 * m + m * (m - 1) // 2
    assert len(lay.keys[c]) == m + 1  # n_i for the couplings out, and the inside sum
    s = st.product_state(tree, tilted_neel_vectors(d), rank=2)
    trunc = integrator.Truncation(1e-10, False, 2, 16)
    for _ in range(2):
        s, _ = integrator.step(lay, s, 0.05, trunc)
    proj = integrator.projections(lay, s)
    for node in (c, tree.children[c][1]):
        sites = sorted(tree.leaves[node])
        assert sites == list(tree.leaves[node])  # the subtree's dense basis in site order
        pos = {site: i for i, site in enumerate(sites)}
        inside = [
            (coef, {pos[site]: op.ops[name] for site, name in key})
            for key, coef in zip(op.keys, op.coefs, strict=True)
            if key and all(site in pos for site, _ in key)
        ]
        X = st.subtree_dense(tree, s, node)
        want = X.conj().T @ dense([2] * len(sites), inside) @ X
        np.testing.assert_allclose(proj[node][integrator.Inside(node)], want, atol=1e-12)

    types, dims, terms, H, vecs = random_system(5)
    terms = [*terms, [0.7, "Id 0"]]  # a constant: the identity on every site
    sys_op = from_terms(types, terms)
    assert () in sys_op.keys
    H = H + 0.7 * np.eye(H.shape[0])
    for tree in (make_tree("binary", len(dims)), make_tree("spec", 5, [[0, 3], 1, [2, 4]])):
        states = {}
        for compress in (True, False):
            lay = integrator.OperatorLayout(tree, sys_op, compress=compress)
            for method in ("parallel", "sequential"):
                s = st.product_state(tree, vecs, rank=2)
                for _ in range(3):
                    s, info = integrator.step(lay, s, 0.05, trunc, method=method, eta=True)
                states[compress, method] = (st.to_dense(tree, s), info.eta)
                y = states[compress, method][0]
                proj = integrator.projections(lay, s)
                assert abs(integrator.energy(lay, s, proj) - np.vdot(y, H @ y).real) < 1e-10
        for method in ("parallel", "sequential"):
            a, b = states[True, method], states[False, method]
            np.testing.assert_allclose(a[0], b[0], atol=1e-10)
            assert abs(a[1] - b[1]) <= 1e-10 * max(1.0, b[1])


def test_the_rejection_tests_stack_is_estimated_after_merging(monkeypatch):
    """The memory estimate's largest stack of the step-rejection test (per node: the
    terms acting on two children, after ``merge_terms``) against the stacks a parallel
    step with the test builds: never below, and equal at the root, where the all-to-all
    couplings give L_1 L_2 terms before merging and L_2 after."""
    from tilegraph.pipelines.ttn.resources import _layout_counts

    d = 12
    terms = [[1.0, f"X {i}"] for i in range(d)] + [
        [1.0 / abs(i - j), f"Pup {i} Pup {j}"] for i in range(d) for j in range(i + 1, d)
    ]
    cfg = TTNConfig(d=d, model={"kind": "terms", "terms": terms}, reject=True)
    estimate = {k: c[3] for k, c in _layout_counts(cfg).items()}
    seen: dict = {}
    two, merge = integrator._two_new_blocks, integrator.merge_terms

    def counting_two(layout, node, *args):
        def counting_merge(terms, shape):
            out = merge(terms, shape)
            seen[node] = max(seen.get(node, 0), len(out))
            return out

        monkeypatch.setattr(integrator, "merge_terms", counting_merge)
        try:
            return two(layout, node, *args)
        finally:
            monkeypatch.setattr(integrator, "merge_terms", merge)

    monkeypatch.setattr(integrator, "_two_new_blocks", counting_two)
    tree = cfg.make_tree()
    lay = integrator.OperatorLayout(tree, cfg.make_operator())
    s = st.product_state(tree, tilted_neel_vectors(d), rank=1)
    trunc = integrator.Truncation(1e-8, False, 1, 8)
    for _ in range(2):
        s, _ = integrator.step(lay, s, 0.05, trunc, method="parallel", eta=True)
    assert seen and all(n <= estimate[k] for k, n in seen.items())
    left, right = (len(tree.leaves[c]) for c in tree.children[0])
    assert seen[0] == estimate[0] == right < left * right


def tilted_neel_vectors(d, th=0.3):
    c, s = np.cos(th / 2), np.sin(th / 2)
    return [np.array([c, s] if i % 2 == 0 else [s, -c], dtype=complex) for i in range(d)]


def test_a_product_starts_variance_splits_into_one_site_and_joint_parts():
    """``variance_split`` against the dense Hamiltonian: the variance, and its one-site
    part as the norm of ``(H - E) phi`` projected onto the product states' tangent space
    (built here from per-site projectors); mean-field eigenstates are flagged."""
    from tilegraph.tasks.ttn.diagnostics import stationary_start, variance_split

    types, dims, terms, H, vecs = random_system(6)
    op = from_terms(types, terms)
    phi = [v / np.linalg.norm(v) for v in vecs]
    y = kron_all([v[:, None] for v in phi])[:, 0]
    E = np.vdot(y, H @ y)
    r = H @ y - E * y
    var, one, joint = variance_split(op, vecs)
    assert abs(var - np.vdot(r, r).real) < 1e-10 * max(1, var)
    P = sum(
        kron_all([np.eye(n) - np.outer(p, p.conj()) if t == s else np.outer(p, p.conj())
                  for t, (n, p) in enumerate(zip(dims, phi, strict=True))])
        for s in range(len(dims))
    )  # fmt: skip
    assert abs(one - np.vdot(P @ r, P @ r).real) < 1e-10 * max(1, var)
    assert one > 1e-3 * var and joint > 1e-3 * var and stationary_start(op, vecs) is None
    # a Fock state under hopping: every site an eigenstate of its mean field
    bose = [parse_site("Boson:2")] * 4
    hop = [[-1.0, f"Bdag {i} B {i + 1}"] for i in range(3)]
    hop += [[-1.0, f"B {i} Bdag {i + 1}"] for i in range(3)] + [[0.5, "N 0 N 1"]]
    fock = [np.eye(3)[n] for n in (1, 0, 1, 0)]
    var, one, joint = variance_split(from_terms(bose, hop), fock)
    assert var > 1 and one == 0 and joint == var
    assert "eigenstate of its mean field" in stationary_start(from_terms(bose, hop), fock)


def test_a_mean_field_stationary_start_is_trapped_at_rank_one_only():
    """All-to-all ``XX`` couplings with a ``Z`` field from all-up: every site is an
    eigenstate of its mean field. At ``r_min = 1`` the sequential BUG stays a product
    state (O(1) error against expm), at ``r_min = 2`` it leaves through the zero-weight
    directions (the warning says "may"); a long string term is checked in bounded time."""
    from tilegraph.tasks.ttn.diagnostics import MAX_ORDER, stationary_start, variance_split

    d = 4
    types = [parse_site("S=1/2")] * d
    terms = [[1.0, f"X {i} X {j}"] for i in range(d) for j in range(i + 1, d)]
    terms += [[0.5, f"Z {i}"] for i in range(d)]
    op = from_terms(types, terms)
    up = [np.array([1.0, 0.0], dtype=complex)] * d
    assert "at r_min=1 the rank-adaptive BUG cannot leave" in stationary_start(op, up, 1)
    assert "may not" in stationary_start(op, up, 2)
    assert "set padding=random" in stationary_start(op, up, 2)
    assert "padding=random" not in stationary_start(op, up, 2, padding="random")  # already
    tree = make_tree("binary", d)
    lay = integrator.OperatorLayout(tree, op)
    H = operators.to_dense(op).toarray()
    errs = {}
    for r_min in (1, 2):
        trunc = integrator.Truncation(1e-10, False, r_min, 16)
        s = st.product_state(tree, up, rank=r_min)
        y0 = st.to_dense(tree, s)
        for _ in range(20):
            s, _ = integrator.step(lay, s, 0.05, trunc, method="sequential")
        errs[r_min] = np.linalg.norm(st.to_dense(tree, s) - sla.expm_multiply(-1j * H, y0))
    assert errs[1] > 0.5 and errs[2] < 1e-2, errs
    # a Jordan-Wigner-like string on 30 sites: parts up to MAX_ORDER sites, a lower bound
    n = 30
    string = [[1.0, "X 0 " + " ".join(f"Z {i}" for i in range(1, n - 1)) + f" X {n - 1}"]]
    tilt = [np.array([0.8, 0.6], dtype=complex)] * n
    var, one, joint = variance_split(from_terms([parse_site("S=1/2")] * n, string), tilt)
    assert MAX_ORDER < n and 0 < one + joint == var <= 1.0 + 1e-12
