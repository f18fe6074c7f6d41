"""MkDocs hooks (``mkdocs.yml``, ``hooks:``): the generated pages of the documentation site.

Nothing generated here is committed; every page is rebuilt from the source at each build:

- **API reference** (``api/*.md``): one page per public module, one entry per name in its
  ``__all__`` (rendered by mkdocstrings from the docstring where the object is defined). A
  public class or function without a docstring is a build warning (an error under
  ``--strict``).
- **Gallery** (``gallery/*.md``): each script in ``examples/`` is run by
  ``scripts/docs_gallery.py`` (results cached in ``build/gallery/`` by the hash of the
  source); its page shows the figures it made, its printed output and its source. A failed
  example is a build warning.
- **Benchmarks** (``benchmarks/*.md``): one page per committed results file in
  ``benchmarks/results/`` with its plots and its tables, rendered from the JSON.
- Every repository path (``tests/...``, ``unrollsci/...``; backticked, or bare with a file
  extension) and backticked test name in the hand-written pages must exist: a stale
  reference is a build warning (paths with a placeholder, ``NAME`` or ``<...>``, excepted).

Environment: ``UNROLLSCI_DOCS_GALLERY=0`` builds without running the examples (the gallery
pages then say so, and the build warns); an example that makes no figure warns too (so
``mkdocs build --strict`` fails on it) unless ``UNROLLSCI_DOCS_REQUIRE_FIGURES=0``.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_gallery  # noqa: E402
from docs_griffe import strip_roles  # noqa: E402

log = logging.getLogger("mkdocs.plugins.unrollsci")

PACKAGE = "unrollsci"
NOT_API = {"bench", "cli"}  # benchmark drivers; the command line has its own page section
RESULTS = ROOT / "benchmarks" / "results"

_generated: dict[str, str | Path] = {}  # src_uri -> text, or a file to copy
_primary: dict[str, str] = {}  # home path of an object -> the module page documenting it


# --------------------------------------------------------------------------- API reference


def public_modules() -> list[str]:
    pkg = ROOT / PACKAGE
    names = [PACKAGE]
    for p in sorted(pkg.iterdir()):
        stem = p.stem if p.suffix == ".py" else p.name
        is_mod = p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
        if is_mod and not stem.startswith("_") and stem not in NOT_API:
            names.append(f"{PACKAGE}.{stem}")
    return names


def _top_level_assigns(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def home_of(module: str, name: str, obj: Any) -> str:
    """Dotted path where ``module.name`` is defined (what mkdocstrings loads)."""
    home = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if isinstance(home, str) and home.startswith(PACKAGE) and qual and "<" not in qual:
        return f"{home}.{qual}"
    # data (constants, tables): the module of the package that assigns it at top level
    base = ROOT / Path(*module.split("."))
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    for f in files:
        if name in _top_level_assigns(f):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts) + f".{name}"
    return f"{module}.{name}"


def _documented(obj: Any) -> bool:
    """Whether a class or function has its own docstring (data never does)."""
    if not (isinstance(obj, type) or callable(obj)):
        return False
    return bool((obj.__doc__ or "").strip())


def api_page(module: str) -> str:
    mod = importlib.import_module(module)
    names = list(getattr(mod, "__all__", []))
    if not names:
        log.warning(f"API reference: {module} has no __all__ (no public names to document)")
    lines = [
        f"# `{module}`",
        "",
        f"::: {module}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "",
    ]
    for name in names:
        obj = getattr(mod, name)
        doc = (obj.__doc__ or "").strip().split("\n")[0] if _documented(obj) else ""
        home = home_of(module, name, obj)
        primary = _primary.get(home, module)
        target = f"#{home}" if primary == module else f"{primary}.md#{home}"
        lines.append(f"- [`{name}`]({target})" + (f": {_prose(doc)}" if doc else ""))
    lines.append("")
    for name in names:
        obj = getattr(mod, name)
        if (isinstance(obj, type) or callable(obj)) and not _documented(obj):
            log.warning(f"API reference: {module}.{name} has no docstring")
        home = home_of(module, name, obj)
        primary = _primary.get(home, module)
        if primary != module:  # the same object, documented on its own module's page
            lines += [
                f"## `{module}.{name}`",
                "",
                f"The same object as [`{primary}.{name}`]({primary}.md#{home}), documented there.",
                "",
            ]
            continue
        lines += [
            f"::: {home_of(module, name, obj)}",
            "    options:",
            f'      heading: "{module}.{name}"',
            f'      toc_label: "{name}"',
            "",
        ]
    return "\n".join(lines)


def _assign_primary(modules: list[str]) -> None:
    """Each object exported by several modules is documented once: on the page of the
    exporting module closest to where it is defined (the longest common prefix)."""
    _primary.clear()
    for module in modules:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", []):
            home = home_of(module, name, getattr(mod, name))
            best = _primary.get(home)
            if best is None or (home.startswith(module + ".") and len(module) > len(best)):
                _primary[home] = module


def build_api() -> list:
    nav = [{"Overview": "api/index.md"}]
    _assign_primary(public_modules())
    index = [
        "# API reference",
        "",
        "Every public name of unrollsci (each module's `__all__`), with its docstring. The",
        "pages are generated from the source at each build (`scripts/docs_hooks.py`); the",
        "examples in the docstrings run as doctests in CI (`tests/test_doctests.py`).",
        "",
        "| module | public names |",
        "|---|---|",
    ]
    for module in public_modules():
        uri = f"api/{module}.md"
        _generated[uri] = api_page(module)
        nav.append({module: uri})
        count = len(getattr(importlib.import_module(module), "__all__", []))
        index.append(f"| [`{module}`]({module}.md) | {count} |")
    _generated["api/index.md"] = "\n".join(index) + "\n"
    return nav


# --------------------------------------------------------------------------------- gallery


def _docstring(path: Path) -> tuple[str, str]:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    title, _, rest = doc.partition("\n")
    return title.strip() or path.stem, rest.strip()


def _prose(text: str) -> str:
    """A docstring's text as Markdown: brackets outside code spans are escaped, so that a
    usage line such as ``[--quick] [--out DIR]`` is not read as a reference link."""
    parts = re.split(r"(`+[^`]*`+)", strip_roles(text))
    return "".join(p if p.startswith("`") else re.sub(r"([\[\]])", r"\\\1", p) for p in parts)


def _fence(text: str, lang: str = "") -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def build_gallery() -> list:
    paths = docs_gallery.example_paths()
    out = docs_gallery.DEFAULT_OUT
    run = os.environ.get("UNROLLSCI_DOCS_GALLERY", "1") != "0"
    # hashed once per build: the pages show the results of the sources as the build found them
    digests = {p: docs_gallery.source_hash(p) for p in paths}
    todo = [p for p in paths if not docs_gallery.is_current(p, out, digests[p])]
    if todo and run:
        log.info(f"gallery: running {len(todo)} example(s): {', '.join(p.stem for p in todo)}")
        jobs = int(os.environ.get("UNROLLSCI_DOCS_JOBS", "2"))
        docs_gallery.run_all(todo, out, jobs=jobs, digests=digests)
    require_figures = os.environ.get("UNROLLSCI_DOCS_REQUIRE_FIGURES", "1") == "1"
    nav = [{"Overview": "gallery/index.md"}]
    index = [
        "# Gallery",
        "",
        "The scripts in `examples/`, run as they are during this build of the documentation",
        "(`scripts/docs_gallery.py`); each page shows the figures the script made, what it",
        "printed, and its source. Run one yourself with `python examples/NAME.py`.",
        "",
    ]
    for path in paths:
        title, body = _docstring(path)
        uri = f"gallery/{path.stem}.md"
        nav.append({path.stem: uri})
        result_file = out / path.stem / "result.json"
        rec = json.loads(result_file.read_text()) if result_file.exists() else None
        page = [f"# {title}", "", f"`examples/{path.name}`", ""]
        if body:
            page += [_prose(body), ""]
        thumb = ""
        if rec is None or rec["sha256"] != digests[path]:
            log.warning(f"gallery: {path.name} was not run for this build")
            page += ['!!! warning "Not run"', "    This example was not run for this build.", ""]
        elif rec["returncode"] != 0:
            log.warning(f"gallery: {path.name} failed (exit {rec['returncode']})")
            page += ['!!! failure "The example failed during this build"', ""]
        else:
            if not rec["figures"]:
                msg = f"gallery: {path.name} makes no figure"
                (log.warning if require_figures else log.info)(msg)
                page += ["This example makes no figure; what it printed is below.", ""]
            for k, fig in enumerate(rec["figures"], 1):
                fig_uri = f"gallery/{path.stem}/{fig}"
                _generated[fig_uri] = out / path.stem / fig
                page += [f"![{title}: figure {k}]({path.stem}/{fig})", ""]
                thumb = thumb or f"{path.stem}/{fig}"
        if rec is not None:
            page += ["## Output", "", _fence(rec["output"] or "(no output)", "text"), ""]
        page += ["## Source", "", _fence(path.read_text(), "python"), ""]
        _generated[uri] = "\n".join(page)
        index += [f"## [{title}]({path.stem}.md)", ""]
        if thumb:
            index += [f"[![{title}]({thumb}){{ width=320 }}]({path.stem}.md)", ""]
        elif rec is not None and rec["returncode"] == 0:
            index += [f"`examples/{path.name}`: printed output, no figure.", ""]
    _generated["gallery/index.md"] = "\n".join(index)
    return nav


# ------------------------------------------------------------------------------ benchmarks


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        s = f"{v:.4g}" if (1e-3 <= a < 1e6) or a == 0 else f"{v:.3e}"
    elif isinstance(v, (dict, list)):
        s = json.dumps(v)
        s = s if len(s) <= 80 else f"({len(v)} entries, in the JSON)"
    else:
        s = str(v)
    return s.replace("|", "&#124;").replace("\n", " ")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _table(rows: list[dict], label: str | None = None, keys: list[str] | None = None) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = ([label] if label else []) + cols
    lines = ["| " + " | ".join(_cell(c) for c in head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        first = [f"**{_cell(keys[i])}**"] if label and keys else []
        lines.append("| " + " | ".join(first + [_cell(r.get(c, "")) for c in cols]) + " |")
    return lines + [""]


def _kv(d: dict) -> list[str]:
    return _table([{"key": k, "value": v} for k, v in d.items()])


def _mostly_scalar(d: dict) -> bool:
    return sum(_is_scalar(v) for v in d.values()) * 2 >= len(d)


def _render(key: str, value: Any, depth: int) -> list[str]:
    """A results field as Markdown: tables for records, a line for long series."""
    head = ["#" * min(depth, 6) + f" `{key}`", ""]
    if isinstance(value, str) and value.lstrip().startswith("|"):
        return head + [value.strip(), ""]  # a Markdown table the benchmark wrote
    if _is_scalar(value):
        return head + [_cell(value), ""]
    if isinstance(value, list):
        if value and all(isinstance(r, dict) for r in value):
            return head + _table(value)
        if all(_is_scalar(v) for v in value) and len(value) <= 12:
            return head + [_cell(value), ""]
        return head + [f"{len(value)} values (in the JSON).", ""]
    if not value:
        return head + ["(empty)", ""]
    if all(_is_scalar(v) for v in value.values()):
        return head + _kv(value)
    if all(isinstance(v, dict) and v and _mostly_scalar(v) for v in value.values()):
        return head + _table(list(value.values()), label=key, keys=list(value))
    if all(isinstance(v, list) for v in value.values()):
        longest = max(len(v) for v in value.values())
        return head + [f"{len(value)} series of up to {longest} values (in the JSON).", ""]
    if depth >= 5:
        return head + ["(nested data, in the JSON)", ""]
    scalars = {k: v for k, v in value.items() if _is_scalar(v)}
    lines = head + (_kv(scalars) if scalars else [])
    for k, v in value.items():
        if not _is_scalar(v):
            lines += _render(k, v, depth + 1)
    return lines


def _bench_description(stem: str) -> str:
    for candidate in (ROOT / PACKAGE / "bench" / f"{stem}.py", ROOT / "benchmarks" / f"{stem}.py"):
        if candidate.exists():
            title, body = _docstring(candidate)
            if "see unrollsci/bench" not in title:
                return f"{title}\n\n{body}".strip()
    return ""


def _bench_home(stem: str) -> str:
    """The benchmark module a results file comes from: the longest matching name."""
    names = [p.stem for p in (ROOT / PACKAGE / "bench").glob("*.py") if not p.stem.startswith("_")]
    match = [n for n in names if stem == n or stem.startswith(n + "_")]
    return max(match, key=len) if match else stem


def build_benchmarks() -> list:
    nav = [{"Overview": "benchmarks/index.md"}]
    stems = sorted(
        p.stem for p in RESULTS.glob("*.json") if not p.stem.endswith(docs_quick_suffix())
    )
    pngs = sorted(p for p in RESULTS.glob("*.png") if not p.stem.endswith(docs_quick_suffix()))
    owner = {}
    for png in pngs:
        match = [s for s in stems if png.stem == s or png.stem.startswith(s + "_")]
        home = _bench_home(png.stem)
        owner[png] = max(match, key=len) if match else (home if home in stems else None)
    index = [
        "# Benchmark results",
        "",
        "The committed results in `benchmarks/results/`, rendered at each build of the docs",
        "from the JSON each benchmark writes (with the configuration and the machine it ran",
        "on). Rerun one with `unrollsci bench NAME` (or `python benchmarks/NAME.py`); `--quick`",
        "gives a short run written to `NAME_quick.json`. How to read each result is in the",
        "guide pages.",
        "",
        "| results | benchmark | plots |",
        "|---|---|---|",
    ]
    for stem in stems:
        data = json.loads((RESULTS / f"{stem}.json").read_text())
        if not isinstance(data, dict):
            data = {"results": data}
        home = _bench_home(stem)
        desc = _bench_description(stem) or _bench_description(home)
        figs = [p for p, s in owner.items() if s == stem]
        page = [f"# `{stem}`", "", f"`benchmarks/results/{stem}.json`, from `unrollsci bench"]
        page[-1] += f" {home}` (`unrollsci/bench/{home}.py`)."
        page += ["", _prose(desc), ""]
        for png in figs:
            _generated[f"benchmarks/{png.name}"] = png
            page += [f"![{png.stem}]({png.name})", ""]
        machine = data.pop("machine", None)
        config = data.pop("config", None)
        data.pop("benchmark", None)
        scalars = {k: v for k, v in data.items() if _is_scalar(v) and not str(v).startswith("|")}
        if scalars:
            page += ["## Summary", ""] + _kv(scalars)
        records = [k for k, v in data.items() if k not in scalars and isinstance(v, list)]
        for key in records + [k for k in data if k not in scalars and k not in records]:
            page += _render(key, data[key], 2)
        for label, block in (("Configuration", config), ("Machine", machine)):
            if block is not None:
                page += [f'??? info "{label}"', ""]
                page += [
                    "    " + ln for ln in _fence(json.dumps(block, indent=1), "json").split("\n")
                ]
                page += [""]
        uri = f"benchmarks/{stem}.md"
        _generated[uri] = "\n".join(page)
        nav.append({stem: uri})
        index.append(f"| [`{stem}`]({stem}.md) | `unrollsci bench {home}` | {len(figs)} |")
    orphans = [p.name for p, s in owner.items() if s is None]
    if orphans:
        index += ["", "Plots without a results file: " + ", ".join(orphans)]
        for png in orphans:
            _generated[f"benchmarks/{png}"] = RESULTS / png
        index += [f"![{p}]({p})" for p in orphans]
    gpu = RESULTS / "gpu"
    if (gpu / "README.md").exists():
        page = [(gpu / "README.md").read_text(), ""]
        for f in sorted(gpu.glob("*.json")):
            data = json.loads(f.read_text())
            data = data if isinstance(data, dict) else {"results": data}
            page += [f"## `gpu/{f.name}`", ""]
            for key, value in data.items():
                page += _render(key, value, 3)
        _generated["benchmarks/gpu.md"] = "\n".join(page)
        nav.append({"GPU runs": "benchmarks/gpu.md"})
        index += ["", "Runs on a GPU machine: [GPU runs](gpu.md)."]
    _generated["benchmarks/index.md"] = "\n".join(index) + "\n"
    return nav


def docs_quick_suffix() -> str:
    return "_quick"


# ------------------------------------------------------------------- hand-written page refs

_PATH_RE = re.compile(r"`((?:unrollsci|tests|benchmarks|examples|scripts|docs)/[\w./-]+)`")
# a bare path to a file (not inside backticks or a link target, not a glob such as
# ``results/graph_cost.*``): a citation written without backticks is checked too
_BARE_RE = re.compile(
    r"(?<![`\w/.-])(?<!\]\()((?:unrollsci|tests|benchmarks|examples|scripts)/[\w/-]+"
    r"\.(?:py|json|md|pt|png|sh|txt))(?![\w*])"
)
_TEST_RE = re.compile(r"`(test_\w+)`")


def check_references(docs_dir: Path) -> None:
    test_names = set()
    for f in (ROOT / "tests").rglob("test_*.py"):
        test_names.update(re.findall(r"def (test_\w+)", f.read_text()))
    for source in sorted(docs_dir.glob("*.md")):  # the hand-written pages
        page, text = source.name, source.read_text()
        for path in _PATH_RE.findall(text) + _BARE_RE.findall(text):
            if "NAME" in path or "<" in path:
                continue
            if not (ROOT / path.rstrip("/")).exists():
                log.warning(f"{page}: `{path}` does not exist")
        for name in _TEST_RE.findall(text):
            if name not in test_names:
                log.warning(f"{page}: no test named `{name}` in tests/")


# ------------------------------------------------------------------------------ mkdocs hooks


def _expand(nav: list, key: str, section: list) -> list:
    out = []
    for item in nav:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if value == key:
                item = {title: section}
            elif isinstance(value, list):
                item = {title: _expand(value, key, section)}
        out.append(item)
    return out


def on_config(config: Any) -> Any:
    _generated.clear()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sections = {
        "api/index.md": build_api(),
        "gallery/index.md": build_gallery(),
        "benchmarks/index.md": build_benchmarks(),
    }
    nav = config["nav"]
    for key, section in sections.items():
        nav = _expand(nav, key, section)
    config["nav"] = nav
    check_references(Path(config["docs_dir"]))
    return config


def on_files(files: Any, config: Any) -> Any:
    for uri, content in _generated.items():
        if isinstance(content, Path):
            f = File.generated(config, uri, abs_src_path=str(content))
        else:
            f = File.generated(config, uri, content=content)
        files.append(f)
    return files
