"""The examples of README.md and docs/*.md, run the way a newcomer runs them.

A newcomer works in one folder: saves the modules a page shows, runs its scripts and
pastes its commands, in the order of the pages. Each code block that a page means to be
run carries a marker on the line before it (an HTML comment, invisible on the rendered
page):

* ``<!-- docs-test: file NAME -->``: the block is saved as ``NAME``;
* ``<!-- docs-test: python -->``: the block is saved and run as a script
  (``python example.py``); a ``print(...)`` whose trailing comment holds only numbers
  must print those numbers (to the digits shown);
* ``<!-- docs-test: run [ARGS] -->``: every ``tilegraph`` command of the block runs and
  exits 0 (with ``ARGS`` after its own, where the page's run would take too long for the
  suite: ``--cluster sync``, fewer samples);
* ``<!-- docs-test: dry-run -->``: every ``tilegraph run``/``sweep`` command of the block
  is validated with ``--dry-run`` (config, user code, data, memory estimate) and exits 0.

``<run-id>`` and ``<sweep-id>`` in a block stand for the newest run (of the pipeline the
path names) or sweep in the folder. Commands that need a GPU (``cuda``) are left out
where none is visible, and blocks that need the ``torch`` extra where it is missing.
"""

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, run_cli

#: The pages in the order a newcomer reads them; later pages use files earlier ones
#: wrote (README's command list runs ``my_pde.py``, ``blocks.zarr``, ``bh.yaml``).
PAGES = (
    "docs/domain_split.md",
    "docs/bilevel.md",
    "docs/ttn.md",
    "docs/picard.md",
    "docs/pipelines.md",
    "README.md",
)
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
ACTIONS = ("file", "python", "run", "dry-run")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    action: str
    arg: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def marked_blocks(page: str) -> list[Block]:
    """The marked code blocks of ``page``, in order."""
    lines = (ROOT / page).read_text().splitlines()
    blocks, mark, i = [], None, 0
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            assert m.group(1) in ACTIONS, f"{page}:{i + 1}: unknown docs-test {m.group(1)!r}"
            mark = (m.group(1), m.group(2))
        elif lines[i].lstrip().startswith("```"):  # a fence, maybe inside a list item
            start, body, indent = i, [], len(lines[i]) - len(lines[i].lstrip())
            i += 1
            while not lines[i].lstrip().startswith("```"):
                body.append(lines[i][indent:])
                i += 1
            if mark:
                blocks.append(Block(page, start + 1, *mark, "\n".join(body) + "\n"))
            mark = None
        elif lines[i].strip() and mark:
            raise AssertionError(f"{page}:{i + 1}: a docs-test marker not followed by a block")
        i += 1
    return blocks


def commands(text: str) -> list[list[str]]:
    """The ``tilegraph`` commands of a shell block (continuations joined, comments cut,
    ``a && b`` split; ``pip install`` and other commands left out: this is installed)."""
    out = []
    for line in re.split(r"\n|&&|;", text.replace("\\\n", " ")):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words = words[1:]  # VAR=value before the command: its environment
        if words and words[0] == "tilegraph":
            out.append(words[1:])
    return out


def newest(folder: Path, pattern: str) -> str:
    # run ids begin with their creation time to the second (sweep ids are hashes);
    # within one second, or for sweeps, the last modified
    def age(p):
        return (p.name[:15] if re.match(r"\d{8}-\d{6}-", p.name) else "", p.stat().st_mtime)

    found = sorted(folder.glob(pattern), key=age)
    assert found, f"no {pattern} in {folder}: the page runs nothing before it reads it"
    return found[-1].name


def fill(text: str, folder: Path) -> str:
    """Replace the ``<run-id>`` and ``<sweep-id>`` placeholders by what the folder holds."""
    runs = folder / "runs"
    text = re.sub(
        r"runs/([\w-]+)/<run-id>",
        lambda m: f"runs/{m.group(1)}/{newest(runs / m.group(1), '*')}",
        text,
    )
    if "<sweep-id>" in text:
        text = text.replace("<sweep-id>", newest(runs / "sweeps", "*"))
    if "<run-id>" in text:
        text = text.replace("<run-id>", newest(runs, "[!s]*/*"))
    return text


CUT = "-- docs-test: next print --"
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def same_number(shown: str, got: str) -> bool:
    """``got`` rounds to ``shown`` at the digits ``shown`` has."""
    if not NUMBER.match(got):
        return False
    digits = len(re.sub(r"[eE].*|[-+.]", "", shown).lstrip("0")) or 1
    a, b = float(shown), float(got)
    return a == b if digits > 15 else float(f"{b:.{digits - 1}e}") == float(f"{a:.{digits - 1}e}")


def expected_prints(text: str) -> list[list[str]]:
    """For each top-level ``print`` with a trailing comment: its numbers (``[]``: not
    checked, the comment is prose)."""
    out = []
    for line in text.splitlines():
        if line.startswith("print(") and "  # " in line:
            words = line.split("  # ", 1)[1].split()
            out.append(words if words and all(NUMBER.match(w) for w in words) else [])
        elif line.startswith("print("):
            out.append([])
    return out


def gpu_visible() -> bool:
    from tilegraph.cluster.gpus import local_gpu_count

    return local_gpu_count() > 0


def needs_torch(text: str) -> bool:
    return any(w in text for w in ("diffusers", "torch", "digits-unet", "my-ddpm"))


def have_torch() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def in_folder(folder: Path, monkeypatch):
    """This process in ``folder`` as a user's shell would be; modules imported from the
    folder are forgotten afterwards, so that no later test sees them."""
    monkeypatch.chdir(folder)
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(folder)):
                del sys.modules[name]


def run_block(block: Block, folder: Path, monkeypatch, skipped: list) -> None:
    text = fill(block.text, folder) if block.action == "python" else block.text
    if needs_torch(text) and not have_torch():
        skipped.append(f"{block.where} (no torch extra)")
        return
    if block.action == "file":
        (folder / block.arg).parent.mkdir(parents=True, exist_ok=True)
        (folder / block.arg).write_text(text)
    elif block.action == "python":
        script = folder / "example.py"
        # a separator before each top-level print tells apart what each one printed
        script.write_text(re.sub(r"(?m)^print\(", f"print({CUT!r})\nprint(", text))
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, f"{block.where}: the script failed:\n{out.stderr[-3000:]}"
        want = expected_prints(text)
        got = out.stdout.split(CUT + "\n")[1:]
        if any(want):
            assert len(got) == len(want), f"{block.where}: printed {out.stdout!r}"
            for shown, printed in zip(want, got, strict=True):
                if shown:
                    words = printed.split()
                    ok = len(words) == len(shown) and all(map(same_number, shown, words))
                    assert ok, f"{block.where}: printed {printed!r}, the page says {shown}"
    else:
        cmds = commands(text)
        assert cmds, f"{block.where}: a {block.action} block without a tilegraph command"
        for argv in cmds:
            # a placeholder names what the commands before it in the block made
            argv = [fill(a, folder) for a in argv]
            line = "tilegraph " + shlex.join(argv)
            if "cuda" in line and not gpu_visible():
                skipped.append(f"{block.where}: {line} (no GPU)")
                continue
            if needs_torch(line) and not have_torch():
                skipped.append(f"{block.where}: {line} (no torch extra)")
                continue
            if block.action == "dry-run":
                if argv[0] not in ("run", "sweep"):
                    continue
                argv = [*argv, "--dry-run"]
            elif block.arg:  # settings the test adds to keep the suite short
                argv = [*argv, *shlex.split(block.arg)]
            with in_folder(folder, monkeypatch):
                rc, out, err = run_cli(*argv)
            assert rc == 0, f"{block.where}: `{line}` exited {rc}: {err.strip()[-2000:]}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The newcomer's folder, shared by the pages in order, and the pages run there."""
    return tmp_path_factory.mktemp("newcomer"), set()


def test_every_page_has_marked_examples():
    """The markers parse, and each page keeps its runnable examples marked."""
    for page in PAGES:
        blocks = marked_blocks(page)
        assert blocks, f"{page}: no docs-test markers"
        for block in blocks:
            if block.action in ("run", "dry-run"):
                assert commands(block.text), block.where
            if block.action == "file":
                assert re.fullmatch(r"[\w.-]+(/[\w.-]+)*", block.arg), block.where


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, folder, monkeypatch):
    path, pages_run = folder
    skipped: list = []
    for before in PAGES[: PAGES.index(page)]:  # what a page uses, when run alone (-k)
        if before not in pages_run:
            for block in marked_blocks(before):
                run_block(block, path, monkeypatch, skipped)
            pages_run.add(before)
    for block in marked_blocks(page):
        t0 = time.perf_counter()
        run_block(block, path, monkeypatch, skipped)
        print(f"{block.where} {block.action}: {time.perf_counter() - t0:.1f} s")
    pages_run.add(page)
    if skipped:
        print("left out:", *skipped, sep="\n  ")


# --- the harness itself ---------------------------------------------------------------
def test_the_harness_checks_prints_and_commands():
    assert commands("tilegraph run x \\\n  --set 'a=[1, 2]'  # note\nls\n") == [
        ["run", "x", "--set", "a=[1, 2]"]
    ]
    assert commands("pip install -e . && tilegraph run y\n") == [["run", "y"]]
    assert same_number("6.6e-05", "6.6213e-05") and not same_number("6.6e-05", "7.1e-05")
    assert same_number("35", "35") and not same_number("35", "36")
    assert not same_number("15", "fifteen")
    text = "print(a, b)  # 35 15\nprint(c)  # per iteration: begin, end\nprint(d)\n"
    assert expected_prints(text) == [["35", "15"], [], []]


def test_the_pipeline_page_example_is_a_working_pipeline(tmp_path):
    folder = tmp_path
    """docs/pipelines.md's whole pipeline, registered as its installed package would be
    (here the ``.dist-info`` folder with the entry point that ``pip install`` writes),
    is listed, runs on a local cluster through the command line, and its result reads
    back with xarray."""
    import xarray as xr
    from helpers import last_json, tilegraph

    (block,) = [b for b in marked_blocks("docs/pipelines.md") if b.action == "file"]
    page = (ROOT / "docs/pipelines.md").read_text()
    assert block.arg == "my_package/pipeline.py"  # what the page's entry point names
    assert 'my-problem = "my_package.pipeline:PIPELINE"' in page
    package = folder / "my_package"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "pipeline.py").write_text(block.text)
    info = folder / "my_package-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tilegraph.pipelines]\nmy-problem = my_package.pipeline:PIPELINE\n"
    )
    env = {"PYTHONPATH": f"{folder}:{os.environ.get('PYTHONPATH', '')}"}
    out = tilegraph("list", cwd=folder, env=env)
    assert out.returncode == 0 and "my-problem" in out.stdout, out.stderr
    out = tilegraph(
        "run", "my-problem", "--cluster", "local:2", "--store", "runs", "--json",
        cwd=folder, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    done = last_json(out.stdout)
    run_dir = folder / "runs" / "my-problem" / done["run_id"]
    assert (run_dir / "summary.png").stat().st_size > 0
    x = xr.open_zarr(run_dir / "result", consolidated=False).x.values
    assert x.shape == (100,) and x[0] == 0.0 and x[-1] == 1.0
    assert done["metrics"]["residual"] == 1e-9 and done["metrics"]["s_per_step"] >= 0


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_resolve():
    """Every relative link of the pages names a file that exists and, with ``#anchor``,
    a heading of it."""
    pages = ["README.md", *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("docs/*.md")))]
    checked = 0
    for page in pages:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / page).parent / path if path else ROOT / page
            assert file.exists(), f"{page}: link to {target}: no such file"
            if anchor:
                heads = re.findall(r"(?m)^#+ (.+)$", file.read_text())
                assert anchor in {slug(h) for h in heads}, f"{page}: no heading #{anchor}"
            checked += 1
    assert checked >= 10
    assert slug("Choosing `n_coarse`") == "choosing-n_coarse"
