"""The user's own code of ``ttn`` (``model.factory``, ``start_factory``) and ``bilevel``
(``problem.factory``), and bilevel's box of x, checked before anything is written: one
``error:`` line naming the field, exit 2, no run in the store."""

import sys
import warnings

import pytest
from helpers import run_cli as _main

HAM = """
import numpy as np
from tilegraph.tasks.ttn.operators import SumOfProducts


def good(**p):
    return {"terms": [[1.0, "Z 0 Z 1"], [0.5, "X 0"], [0.5, "X 1"], [0.5, "X 2"], [0.5, "X 3"]]}


def raises(**p):
    raise RuntimeError("ham boom")


def none(**p):
    return None


def badterms(**p):
    return {"terms": "abc"}


def nonherm(**p):
    return {"terms": [[1.0, "S+ 0 S- 1"]]}


def wrongop(**p):
    return {"terms": [[1.0, "Foo 0"]], "ops": {"Foo": np.eye(3)}}


def strop(**p):
    return {"terms": [[1.0, "Foo 0"]], "ops": {"Foo": "x"}}


def nanop(**p):
    return {"terms": [[1.0, "Foo 0"]], "ops": {"Foo": np.full((2, 2), np.nan)}}


def nancoef(**p):
    return {"terms": [["nan", "Z 0"]]}


def extra(**p):
    return {"terms": [[1.0, "Z 0"]], "bogus": 1}


def wrongdims(**p):
    return SumOfProducts((3, 3, 3, 3), {}, (), ())


def start_good(d):
    return ([1.0, 0.0] if k % 2 else "down" for k in range(d))


def start_two(d):
    return [np.array([1.0, 0.0])] * 2


def start_long(d):
    return [np.array([1.0, 0.0, 0.0])] * d


def start_nan(d):
    return [np.array([np.nan, 0.0])] * d


def start_zero(d):
    return [np.zeros(2)] * d


def start_none(d):
    return None


def start_raises(d):
    raise ValueError("start boom")
"""

BLOCKS = """
import numpy as np
from tilegraph.tasks.bilevel.problems import QuadraticBlocks


def good(**p):
    return QuadraticBlocks(m=10)


def raises(**p):
    raise RuntimeError("bilevel boom")


def none(**p):
    return None


def with_attr(name, value):
    def make(**p):
        q = QuadraticBlocks(m=10)
        setattr(q, name, value)
        return q
    return make


str_m = with_attr("m", "ten")
neg_dim = with_attr("dim_x", -5)
short_n = with_attr("n_lower", np.full(3, 32))
bad_xstar = with_attr("x_star", np.ones(3))
no_hvp = with_attr("hvp_yy_g", None)


def with_method(name, result):
    def make(**p):
        q = QuadraticBlocks(m=10)
        setattr(q, name, lambda *a, **k: result(q))
        return q
    return make


short_grad = with_method("grad_y_g", lambda q: np.zeros(3))
nan_grad = with_method("grad_y_g", lambda q: np.full(q.dim_y, np.nan))
vector_g = with_method("g", lambda q: np.zeros(2))
flat_hess = with_method("hess_yy_g", lambda q: np.zeros(q.dim_y))


def _boom(q):
    raise KeyError("no cross term")


raising_cross = with_method("cross_xy_g", _boom)
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A folder holding the user's modules ``tg_pf_ham`` and ``tg_pf_blocks``, the
    working directory and importable (undone after the test)."""
    (tmp_path / "tg_pf_ham.py").write_text(HAM)
    (tmp_path / "tg_pf_blocks.py").write_text(BLOCKS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("tg_pf_ham", "tg_pf_blocks"):
        sys.modules.pop(name, None)


def _refused(folder, name, sets, field, needle):
    """Run ``name`` with ``sets``: exit 2, one ``error:`` line naming ``field`` and
    holding ``needle``, no run store."""
    store = folder / "runs"
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = _main("run", name, *args, "--cluster", "sync", "--store", str(store))
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert field in lines[0] and needle in lines[0], (field, needle, lines[0])
    assert not store.exists()


TTN = ["d=4", "T=0.1", "h=0.05"]
HAM_CASES = {
    "raises": "tg_pf_ham:raises(**model.params) raised RuntimeError: ham boom",
    "none": "tg_pf_ham:none returned None; it must return {'terms'",
    "badterms": "returned 'terms' as a str; it must be a list",
    "nonherm": 'not Hermitian: term [1, "S+ 0 S- 1"]',
    "wrongop": "operator 'Foo' has shape (3, 3), but site 0 (S=1/2) has dimension 2",
    "strop": "ops['Foo'] must be a square matrix of numbers",
    "nanop": "ops['Foo'] holds NaN or infinity",
    "nancoef": 'term [nan, "Z 0"]: the coefficient must be finite',
    "extra": "unknown keys ['bogus']",
    "wrongdims": "dimensions (3, 3, 3, 3), but sites give (2, 2, 2, 2)",
}


@pytest.mark.parametrize("case", list(HAM_CASES))
def test_a_bad_hamiltonian_factory_is_one_line(user, case):
    sets = [*TTN, "model.kind=custom", f"model.factory=tg_pf_ham:{case}"]
    _refused(user, "ttn", sets, "config field 'model.factory': ", HAM_CASES[case])


START_CASES = {
    "start_two": "tg_pf_ham:start_two returned 2 vectors for d=4",
    "start_long": "for site 0 (S=1/2) array([1., 0., 0.]) (shape (3,)): need a vector of length 2",
    "start_nan": "a vector holding NaN or infinity",
    "start_zero": "the zero vector",
    "start_none": "tg_pf_ham:start_none returned None; it must return d=4 vectors",
    "start_raises": "tg_pf_ham:start_raises(d) raised ValueError: start boom",
}


@pytest.mark.parametrize("case", list(START_CASES))
def test_a_bad_start_factory_is_one_line(user, case):
    sets = [*TTN, f"start_factory=tg_pf_ham:{case}"]
    _refused(user, "ttn", sets, "config field 'start_factory': ", START_CASES[case])


def test_a_non_finite_coefficient_is_one_line_without_warnings(user):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sets = [*TTN, "model.kind=terms", "model.terms=[['1+infj', 'Z 0']]"]
        _refused(user, "ttn", sets, "model.terms", 'term [1+infj, "Z 0"]: the coefficient must')
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)], seen


BILEVEL = ["problem.kind=custom", "blocks_per_iter=2", "max_iter=20", "tol=null"]
BLOCK_CASES = {
    "raises": "tg_pf_blocks:raises(**problem.params) raised RuntimeError: bilevel boom",
    "none": "returned a NoneType without m, dim_x",
    "str_m": "returned m='ten'; it must be an int >= 1",
    "neg_dim": "returned dim_x=-5; it must be an int >= 1",
    "short_n": "n_lower=array([32, 32, 32]); it must be an int >= 1 or m=10 of them",
    "bad_xstar": "x_star has shape (3,); it must be an array of shape (dim_x,) = (5,)",
    "no_hvp": "whose hvp_yy_g is not callable",
    "short_grad": "grad_y_g(0, x0, y=0) gave shape (3,); it must give an array of shape "
    "(dim_y,) = (5,)",
    "nan_grad": "grad_y_g(0, x0, y=0) gave NaN or infinity",
    "vector_g": "g(0, x0, y=0) gave shape (2,); it must give a number",
    "flat_hess": "hess_yy_g(0, x0, y=0) gave shape (5,); it must give an array of shape "
    "(dim_y, dim_y) = (5, 5)",
    "raising_cross": "cross_xy_g(0, x0, y=0, v=1) raised KeyError: 'no cross term'",
}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_a_bad_block_problem_is_one_line(user, case):
    sets = [*BILEVEL, f"problem.factory=tg_pf_blocks:{case}"]
    _refused(user, "bilevel", sets, "config field 'problem.factory': ", BLOCK_CASES[case])


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["x_min=1", "x_max=0"], "x_min=1 must be <= x_max=0"),
        (["problem.kind=dataset", "problem.dataset=blocks.zarr", "x_max=-30"],
         "x_min=-20 must be <= x_max=-30, the box of x (x_min: the default of problem.kind"),
    ],
    ids=["set", "dataset-default"],
)  # fmt: skip
def test_an_inverted_box_is_one_line(user, sets, needle):
    _refused(user, "bilevel", sets, "config: ", needle)


@pytest.mark.parametrize(
    "name, sets",
    [
        ("ttn", [*TTN, "model.kind=custom", "model.factory=tg_pf_ham:good",
                 "start_factory=tg_pf_ham:start_good"]),
        ("bilevel", [*BILEVEL, "problem.factory=tg_pf_blocks:good", "x_min=0", "x_max=0"]),
    ],
    ids=["ttn", "bilevel"],
)  # fmt: skip
def test_good_user_code_passes_the_checks(user, name, sets):
    store = user / "runs"
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = _main("run", name, *args, "--cluster", "sync", "--store", str(store), "--dry-run")
    assert rc == 0, err
    assert not store.exists()
