"""The ```python blocks of README.md and docs/*.md run as a user would run them.

Each page's python blocks run in order in one fresh namespace (a block may use what an
earlier block of the same page defined), in a temporary working directory of their own
(nothing is written into the repository), with ``OMP_NUM_THREADS=1`` and unrollsci's own
warnings turned into errors (as in the test suite). All pages run in one subprocess (one
torch import), each page with a fresh namespace, its own directory and torch's seed reset
to that of a fresh process. One test per block (id ``page[index]``, the index counting the
page's python blocks from 0), so a failure names the block.

- :data:`SLOW_OR_DATA`: blocks that train for a long time or are fragments with a user's
  placeholders (``operator``, ``train_problems``); they are skipped, with the reason, and
  only their import statements run, so that later blocks of the page still find the names.
- :data:`XFAIL`: blocks that fail because of a known defect (audit report id); marked
  ``xfail(strict=True)``, so that fixing the docs turns them into a failure to remove.
- :data:`EXPECT`: regular expressions that a block's printed output must match, where the
  page says what the block prints (e.g. ``# tensor(True)``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

# (page, index of the python block in the page) -> why it is not run
SLOW_OR_DATA: dict[tuple[str, int], str] = {
    ("docs/ct.md", 2): "trains UnrolledCT for 10 x 50 steps (about a minute on one core)",
    ("docs/ct.md", 3): "empirical_lipschitz: 100 Adam steps through a 20-layer ConvexRidgeCT "
    "(about 50 s on one core)",
    ("docs/graph.md", 1): "fragment: train_problems is the user's list of problems; trains 40 "
    "epochs",
    ("docs/precond.md", 0): "trains a learned preconditioner for 15 epochs (about 7 s)",
    ("docs/solvers.md", 2): "fragment: A_spd and b are the user's (the call's signature)",
    ("docs/solvers.md", 3): "sketch of the internal pcg_iterate call (matvec, x0, K are "
    "placeholders)",
    ("docs/unrolled.md", 0): "fragment: operator and y are the user's",
    ("docs/unrolled.md", 1): "fragment: model, sampler and the validation data are the user's; "
    "trains 4 stages x 4 epochs x 100 steps",
}

# (page, index) -> defect id of the audit report (the block fails because of it)
XFAIL: dict[tuple[str, int], str] = {}

# (page, index) -> regular expressions its printed output must match (re.search, MULTILINE)
_ADJOINT = r"^\d(\.\d+)?e-(1[5-9]|[2-9]\d)\b"  # check_adjoint: "~1e-16" (float64 rounding)
EXPECT: dict[tuple[str, int], list[str]] = {
    ("README.md", 0): [
        _ADJOINT,
        r"^Solution\(x\.shape=\(1, 200\), iterations=\d+, residual=[^,]+, converged=True\)$",
        r"^tensor\(\[0\.1818, 0\.2727\], dtype=torch\.float64\)$",  # [[4, 1], [1, 3]]^-1 1
    ],
    ("docs/getting-started.md", 0): [
        _ADJOINT,
        r"^Solution\(x\.shape=\(1, 200\), iterations=\d+, residual=[^,]+, converged=True\)$",
        r"^tensor\(\[0\.1818, 0\.2727\], dtype=torch\.float64\)$",
    ],
    ("docs/ct.md", 0): [_ADJOINT],  # "~1e-17 in float64"
    ("docs/solvers.md", 0): [_ADJOINT + r" 0\.\d+$"],  # blur then mask: norm below 1
    ("docs/precond.md", 1): [r"^tensor\(True\)$"],
}

# Files the blocks read from the repository, linked (read-only use) into the page's directory.
LINKS: dict[str, list[str]] = {
    "docs/lista_accuracy.md": ["benchmarks/checkpoints"],
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*$")


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of ``page`` (relative to the repository root), dedented."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, body = m["fence"], m["lang"].lower(), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in ("python", "py"):
            blocks.append(textwrap.dedent("\n".join(body)) + "\n")
    return blocks


BLOCKS = {page: python_blocks(page) for page in PAGES}

_DRIVER = r"""
import ast, contextlib, io, json, os, sys, traceback, warnings

spec = json.load(open(sys.argv[1]))
import torch  # noqa: E402
from unrollsci import UnrollsciWarning  # noqa: E402

seed0 = torch.initial_seed()
results = {}
for page in spec["pages"]:
    os.chdir(page["dir"])
    torch.manual_seed(seed0)
    ns = {"__name__": "__main__"}
    out = results[page["page"]] = {}
    failed = None
    for block in page["blocks"]:
        code = block["code"]
        if not block["run"]:  # only its imports, for the blocks after it
            tree = ast.parse(code)
            tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            code = ast.unparse(tree)
        name = f"<{page['page']} python block {block['index']}>"
        buf = io.StringIO()
        status, error = "ok", ""
        try:
            with contextlib.redirect_stdout(buf), warnings.catch_warnings():
                warnings.simplefilter("error", UnrollsciWarning)
                exec(compile(code, name, "exec"), ns)
        except BaseException:  # noqa: BLE001 - reported per block
            status, error = "error", traceback.format_exc(limit=-8)
        out[str(block["index"])] = {"status": status, "stdout": buf.getvalue(), "error": error}
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Runs every page's blocks once (one subprocess) and returns the per-block outcome."""
    tmp = tmp_path_factory.mktemp("docs_snippets")
    pages = []
    for k, page in enumerate(PAGES):
        if not BLOCKS[page]:
            continue
        where = tmp / f"page{k}"
        where.mkdir()
        for rel in LINKS.get(page, []):
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).symlink_to(ROOT / rel, target_is_directory=(ROOT / rel).is_dir())
        blocks = [
            {"index": i, "code": code, "run": (page, i) not in SLOW_OR_DATA}
            for i, code in enumerate(BLOCKS[page])
        ]
        pages.append({"page": page, "dir": str(where), "blocks": blocks})
    spec, out = tmp / "spec.json", tmp / "results.json"
    spec.write_text(json.dumps({"pages": pages}))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(spec), str(out)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"the snippet driver failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _params() -> list:
    params = []
    for page in PAGES:
        for i in range(len(BLOCKS[page])):
            marks = []
            if (page, i) in SLOW_OR_DATA:
                marks.append(pytest.mark.skip(reason=SLOW_OR_DATA[page, i]))
            if (page, i) in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[page, i]))
            params.append(pytest.param(page, i, id=f"{page}[{i}]", marks=marks))
    return params


@pytest.mark.parametrize(("page", "index"), _params())
def test_docs_python_block(results, page, index):
    if page == "docs/lista_accuracy.md":
        ckpt = ROOT / "benchmarks/checkpoints/LISTA-CPSS_snrinf.pt"
        if not ckpt.is_file() or ckpt.stat().st_size < 10_000:  # absent, or a Git LFS pointer
            pytest.skip(f"{ckpt.relative_to(ROOT)} is not here")
    got = results[page][str(index)]
    assert got["status"] == "ok", (
        f"{page}, python block {index}, failed:\n{BLOCKS[page][index]}\n{got['error']}"
    )
    for pattern in EXPECT.get((page, index), []):
        assert re.search(pattern, got["stdout"], re.MULTILINE), (
            f"{page}, python block {index}: its output does not match {pattern!r} (what the "
            f"page says it prints):\n{got['stdout']}"
        )


def test_tables_name_existing_blocks():
    """Every key of the tables above names a python block that exists (no stale entry)."""
    assert sum(len(b) for b in BLOCKS.values()) >= 20, "the block extraction found too few"
    for table in (SLOW_OR_DATA, XFAIL, EXPECT):
        for page, index in table:
            assert page in BLOCKS and index < len(BLOCKS[page]), (page, index)
    assert not set(SLOW_OR_DATA) & set(EXPECT), "an EXPECT entry of a block that never runs"
