"""The examples of README.md and docs/*.md, run the way a newcomer runs them.

A newcomer works in one folder: saves the modules a page shows, runs its scripts and
pastes its commands, in the order of the pages. Every ``bash`` and ``python`` block of a
page carries a marker on the line before it (an HTML comment, invisible on the rendered
page) that says what the suite does with it:

* ``<!-- docs-test: file NAME -->``: the block is saved as ``NAME``;
* ``<!-- docs-test: python -->``: the block is saved and run as a script
  (``python example.py``); a top-level ``print(...)`` whose trailing comment holds only
  numbers must print those numbers (to the digits shown);
* ``<!-- docs-test: run [ARGS] -->``: every ``tilegraph`` command of the block runs and
  exits 0 (with ``ARGS`` after its own, where the page's run would take too long for the
  suite: ``--cluster sync``, fewer samples);
* ``<!-- docs-test: dry-run -->``: every ``tilegraph run``/``sweep`` command of the block
  is validated with ``--dry-run`` (config, user code, data, memory estimate) and exits 0;
  ``list``, ``runs`` and ``show`` run as written;
* ``<!-- docs-test: skip REASON -->``: not run (a GPU machine, a batch queue, a cluster
  started by hand, the suite itself).

``<run-id>`` and ``<sweep-id>`` stand for the newest run (of the pipeline the path
names) or sweep in the folder when the command (or the script) starts. Commands that
need a GPU (``cuda``) are left out where none is visible, and blocks that need the
``torch`` extra where it is not installed; both are reported as warnings.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
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
#: Pages with nothing a CPU machine can run (every block skip-marked).
SKIPPED_PAGES = ("docs/gpu.md",)
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
ACTIONS = ("file", "python", "run", "dry-run", "skip")
#: Shell words a marked command block may hold besides ``tilegraph`` (the suite is
#: installed, and ``ls`` only shows what is there).
OTHER_COMMANDS = ("pip", "ls")
PLACEHOLDER = re.compile(r"<([a-z][a-z-]*)>")


@dataclass
class Block:
    """A marked code block of a page."""

    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    action: str
    arg: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def page_blocks(page: str) -> list[Block]:
    """The code blocks of ``page`` in order, with their markers (``action=""``: none).

    Raises
    ------
    AssertionError
        A marker that does not parse or is not followed by a block, or a fence left open.
    """
    lines = (ROOT / page).read_text().splitlines()
    blocks, mark, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--") and re.search(r"docs?-?test", line):
            m = MARK.match(line)
            assert m and m.group(1) in ACTIONS, f"{page}:{i + 1}: a bad marker: {line.strip()}"
            assert mark is None, f"{page}:{i + 1}: two markers for one block"
            needs_arg = m.group(1) in ("file", "skip")
            assert bool(m.group(2)) == needs_arg or m.group(1) == "run", f"{page}:{i + 1}"
            mark = (m.group(1), m.group(2))
        elif line.lstrip().startswith("```"):  # a fence, maybe inside a list item
            start, body, indent = i, [], len(line) - len(line.lstrip())
            lang = line.strip()[3:].strip()
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i][indent:])
                i += 1
            assert i < len(lines), f"{page}:{start + 1}: a code block never closed"
            action, arg = mark or ("", "")
            blocks.append(Block(page, start + 1, lang, action, arg, "\n".join(body) + "\n"))
            mark = None
        elif line.strip() and mark:
            raise AssertionError(f"{page}:{i + 1}: a docs-test marker not followed by a block")
        i += 1
    return blocks


def marked_blocks(page: str) -> list[Block]:
    """The blocks of ``page`` that the suite runs or saves."""
    return [b for b in page_blocks(page) if b.action and b.action != "skip"]


def commands(text: str) -> list[tuple[dict, list[str]]]:
    """The ``tilegraph`` commands of a shell block: ``(environment, arguments)`` each
    (continuations joined, comments cut, ``a && b`` and ``a; b`` split, ``VAR=value``
    before a command its environment).

    Raises
    ------
    AssertionError
        A pipe, a redirection, or a command the suite does not know.
    """
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        # <run-id> is a placeholder, not two redirections
        lexer = shlex.shlex(PLACEHOLDER.sub(r"@@\1@@", line), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words = [re.sub(r"@@([a-z-]+)@@", r"<\1>", w) for w in lexer]
        for part in _split(words, ("&&", ";")):
            env = {}
            while part and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", part[0]):
                key, _, value = part.pop(0).partition("=")
                env[key] = value
            if not part:
                continue
            bad = [w for w in part if w in ("|", ">", ">>", "<", "&", "||")]
            assert not bad, f"a shell construct the suite cannot run: {line.strip()}"
            if part[0] == "tilegraph":
                out.append((env, part[1:]))
            else:
                assert part[0] in OTHER_COMMANDS, f"not a tilegraph command: {line.strip()}"
    return out


def _split(words: list[str], seps: tuple) -> list[list[str]]:
    parts = [[]]
    for w in words:
        if w in seps:
            parts.append([])
        else:
            parts[-1].append(w)
    return parts


def fill(text: str, folder: Path) -> str:
    """Replace ``<run-id>`` (of the pipeline a ``runs/NAME/`` before it names, else of
    any) and ``<sweep-id>`` by the newest the folder holds now."""
    from tilegraph import storage

    root = storage.Root(str(folder / "runs"))

    def last_run(pipeline=None) -> str:
        runs = root.runs(pipeline)  # sorted by id: by the time they were made
        assert runs, f"no {pipeline or ''} run in {folder}: the page made none before"
        return runs[-1]["run_id"]

    text = re.sub(r"runs/([\w-]+)/<run-id>", lambda m: f"runs/{m[1]}/{last_run(m[1])}", text)
    if "<run-id>" in text:
        text = text.replace("<run-id>", last_run())
    if "<sweep-id>" in text:  # sweep ids are hashes: the last written
        sweeps = sorted((folder / "runs" / "sweeps").glob("*"), key=lambda p: p.stat().st_mtime)
        assert sweeps, f"no sweep in {folder}: the page made none before"
        text = text.replace("<sweep-id>", sweeps[-1].name)
    left = [m.group(0) for m in PLACEHOLDER.finditer(text)]
    assert not left, f"placeholders the suite cannot fill: {left}"
    return text


NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
CUT = "-- docs-test: next print --"


def same_number(shown: str, got: str) -> bool:
    """``got`` rounds to ``shown`` at the significant digits ``shown`` has."""
    if not NUMBER.match(got):
        return False
    digits = len(re.sub(r"[eE].*|[-+.]", "", shown).lstrip("0")) or 1
    a, b = float(shown), float(got)
    if digits > 15:  # beyond a float's precision: rounding would change nothing
        return a == b
    return float(f"{b:.{digits - 1}e}") == float(f"{a:.{digits - 1}e}")


def expected_prints(text: str) -> list[list[str]]:
    """For each top-level ``print`` of a script: the numbers its trailing comment
    promises (``[]``: none, the comment is prose or missing)."""
    out = []
    for line in text.splitlines():
        if line.startswith("print("):
            comment = re.split(r"\s#\s*", line, maxsplit=1)[1:]
            words = comment[0].split() if comment else []
            out.append(words if words and all(NUMBER.match(w) for w in words) else [])
    return out


def gpu_visible() -> bool:
    from tilegraph.cluster.gpus import local_gpu_count

    return local_gpu_count() > 0


def needs_torch(text: str) -> bool:
    """Whether code or a command uses the ``torch`` extra."""
    return any(w in text for w in ("diffusers", "torch", "digits-unet", "my-ddpm"))


def torch_extra() -> bool:
    """Whether the ``torch`` extra is installed (a broken install then fails loudly)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))


@dataclass
class Newcomer:
    """The newcomer's folder, and the pages that ran there (``True``: without error)."""

    path: Path
    pages: dict = field(default_factory=dict)
    left_out: list = field(default_factory=list)

    def forget_modules(self) -> None:
        """Drop what this process imported from the folder, so that the next command
        imports the folder's files anew and no other test sees them."""
        for name, mod in list(sys.modules.items()):
            if (getattr(mod, "__file__", None) or "").startswith(str(self.path)):
                del sys.modules[name]
        names = {p.stem for p in self.path.glob("*.py")}
        names |= {p.name for p in self.path.iterdir() if (p / "__init__.py").exists()}
        for name in names & set(sys.modules):  # a same-named module from elsewhere
            del sys.modules[name]

    def save_file(self, block: Block) -> None:
        """Save the block under its name."""
        (self.path / block.arg).parent.mkdir(parents=True, exist_ok=True)
        (self.path / block.arg).write_text(block.text)

    def run_script(self, block: Block) -> None:
        """Run the block as ``python example.py`` and check the numbers it promises."""
        text = fill(block.text, self.path)
        script = self.path / "example.py"
        # a separator before each top-level print tells apart what each one printed
        script.write_text(re.sub(r"(?m)^print\(", f"print({CUT!r})\nprint(", text))
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"{block.where}: the script failed:\n{out.stderr[-3000:]}"
        want = expected_prints(text)
        got = out.stdout.split(CUT + "\n")[1:]
        assert len(got) == len(want), f"{block.where}: printed {out.stdout!r}"
        for shown, printed in zip(want, got, strict=True):
            words = printed.split()
            ok = not shown or (len(words) == len(shown) and all(map(same_number, shown, words)))
            assert ok, f"{block.where}: printed {printed!r}, the page says {shown}"

    def run_commands(self, block: Block, monkeypatch) -> None:
        """Run (or dry-run) the block's ``tilegraph`` commands in this process."""
        cmds = commands(block.text)
        assert cmds, f"{block.where}: a {block.action} block without a tilegraph command"
        for env, argv in cmds:
            line = "tilegraph " + shlex.join(argv)
            if "cuda" in line and not gpu_visible():
                self.left_out.append(f"{block.where}: {line} (no GPU)")
                continue
            if needs_torch(line) and not torch_extra():
                self.left_out.append(f"{block.where}: {line} (no torch extra)")
                continue
            # a placeholder names what the commands before it made
            argv = [fill(a, self.path) for a in argv]
            if block.action == "dry-run" and argv[0] in ("run", "sweep"):
                argv = [*argv, "--dry-run"]
            elif block.action == "run" and block.arg:  # to keep the suite short
                argv = [*argv, *shlex.split(block.arg)]
            with monkeypatch.context() as mp:
                mp.chdir(self.path)
                mp.setattr(sys, "path", list(sys.path))  # the CLI puts the folder first
                mp.setenv("HOME", str(self.path))  # no profile of the developer's own
                mp.delenv("TILEGRAPH_JOBQUEUE_PROFILE", raising=False)
                for key, value in env.items():
                    mp.setenv(key, value)
                self.forget_modules()
                try:
                    rc, out, err = run_cli(*argv)
                finally:
                    self.forget_modules()
            assert rc == 0, f"{block.where}: `{line}` exited {rc}: {err.strip()[-2000:]}"

    def run_page(self, page: str, monkeypatch) -> None:
        """Every marked block of ``page``, in order."""
        self.pages[page] = False
        for block in marked_blocks(page):
            if block.action in ("file", "python") and needs_torch(block.text):
                if not torch_extra():
                    self.left_out.append(f"{block.where} (no torch extra)")
                    continue
            if block.action == "file":
                self.save_file(block)
            elif block.action == "python":
                self.run_script(block)
            else:
                self.run_commands(block, monkeypatch)
        self.pages[page] = True


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """The newcomer's folder, shared by the pages in order."""
    return Newcomer(tmp_path_factory.mktemp("newcomer"))


def test_every_runnable_block_is_marked():
    """Every page is read; every ``bash`` and ``python`` block says what the suite does
    with it; the markers parse and name what they need."""
    pages = {"README.md", *(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))}
    assert pages == {*PAGES, *SKIPPED_PAGES}, "a page the suite does not know"
    for page in [*PAGES, *SKIPPED_PAGES]:
        blocks = page_blocks(page)
        for block in blocks:
            if block.lang in ("bash", "python", "sh", "shell", "console"):
                assert block.action, f"{block.where}: a {block.lang} block without a marker"
            if block.action in ("run", "dry-run"):
                assert commands(block.text), block.where
            if block.action == "file":
                assert re.fullmatch(r"[\w.-]+(/[\w.-]+)*", block.arg), block.where
        if page in SKIPPED_PAGES:
            assert not marked_blocks(page), f"{page} runs something: move it to PAGES"
        else:
            assert marked_blocks(page), f"{page}: nothing marked to run"


@pytest.mark.timeout(1200)  # a page run alone (-k) first runs the pages before it
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, newcomer, monkeypatch):
    for before in PAGES[: PAGES.index(page)]:
        if before not in newcomer.pages:
            newcomer.run_page(before, monkeypatch)
        if not newcomer.pages[before]:
            pytest.skip(f"needs {before}, whose examples failed")
    try:
        newcomer.run_page(page, monkeypatch)
    finally:
        for what in newcomer.left_out:
            warnings.warn(f"left out: {what}", stacklevel=1)
        newcomer.left_out.clear()


def test_the_pipeline_page_example_is_a_working_pipeline(tmp_path):
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
    (tmp_path / "my_package").mkdir()
    (tmp_path / "my_package" / "__init__.py").write_text("")
    (tmp_path / "my_package" / "pipeline.py").write_text(block.text)
    info = tmp_path / "my_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tilegraph.pipelines]\nmy-problem = my_package.pipeline:PIPELINE\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tilegraph("list", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "my-problem" in out.stdout, out.stderr
    out = tilegraph(
        "run", "my-problem", "--cluster", "local:2", "--store", "runs", "--json",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    done = last_json(out.stdout)
    run_dir = tmp_path / "runs" / "my-problem" / done["run_id"]
    assert (run_dir / "summary.png").stat().st_size > 0
    x = xr.open_zarr(run_dir / "result", consolidated=False).x.values
    assert x.shape == (100,) and x[0] == 0.0 and x[-1] == 1.0
    assert done["metrics"]["residual"] == 1e-9 and done["metrics"]["s_per_step"] >= 0


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> set[str]:
    """The anchors of the headings of ``page`` (not ``#`` lines inside code blocks)."""
    text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", page.read_text())
    return {slug(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}


def test_links_between_the_pages_resolve():
    """Every relative link of the pages names a file that exists and, with ``#anchor``,
    a heading of it."""
    checked = 0
    for page in [*PAGES, *SKIPPED_PAGES]:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / page).parent / path if path else ROOT / page
            assert file.exists(), f"{page}: link to {target}: no such file"
            assert not anchor or anchor in headings(file), f"{page}: no heading #{anchor}"
            checked += 1
    assert checked >= 10


# --- the harness itself ---------------------------------------------------------------
def test_the_harness_reads_commands_prints_and_headings():
    block = "tilegraph run x \\\n  --set 'a=[1, 2]'  # note\nls\n"
    assert commands(block) == [({}, ["run", "x", "--set", "a=[1, 2]"])]
    assert commands("pip install -e . && tilegraph run y\n") == [({}, ["run", "y"])]
    assert commands("A_B=4 tilegraph show <run-id> --set 'c=1;2'\n") == [
        ({"A_B": "4"}, ["show", "<run-id>", "--set", "c=1;2"])
    ]
    for bad in ("tilegraph runs | head -3\n", "dask scheduler &\n", "tilegraph list > x\n"):
        with pytest.raises(AssertionError):
            commands(bad)
    assert same_number("6.6e-05", "6.6213e-05") and not same_number("6.6e-05", "7.1e-05")
    assert same_number("35", "35") and not same_number("35", "36")
    assert not same_number("15", "fifteen")
    text = "print(a, b)  # 35 15\nprint(c)  # per iteration: begin\nprint(d)\nprint(e) #7\n"
    assert expected_prints(text) == [["35", "15"], [], [], ["7"]]
    assert slug("Choosing `n_coarse`") == "choosing-n_coarse"
    assert slug("Your own PDE") == "your-own-pde"
