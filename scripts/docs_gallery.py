"""Run the scripts in ``examples/`` for the documentation gallery and keep what they show.

Each example runs as it is, in its own process (``python examples/NAME.py`` semantics,
``__name__ == "__main__"``), in a scratch working directory, with matplotlib's
non-interactive ``Agg`` backend. Every figure it makes is saved as a PNG: at each
``plt.show()`` call, and whatever is still open when it ends. Its printed output
(stdout and stderr, interleaved), exit status, wall time and the SHA-256 of its source go
to ``OUT/NAME/result.json``; figures to ``OUT/NAME/figure_K.png``. A stored result is
reused while neither the example nor the library's source has changed.

Nothing here is committed: ``OUT`` (default ``build/gallery``, git-ignored) is read by the
docs build (``scripts/docs_hooks.py``), which runs this module for any example whose stored
result is missing or older than its source. Usage::

    python scripts/docs_gallery.py [--out build/gallery] [--jobs 2] [--force] [NAME ...]

Exit status 1 if an example failed (non-zero exit or timeout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_OUT = ROOT / "build" / "gallery"
TIMEOUT_S = 900

# Runs inside the example's process: save figures on show() and at exit, then run the file.
_WRAPPER = r"""
import atexit, runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, path = sys.argv[1], sys.argv[2]
saved = []

def _save_open_figures(*args, **kwargs):
    for num in plt.get_fignums():
        fig = plt.figure(num)
        name = f"figure_{len(saved) + 1}.png"
        fig.savefig(f"{out}/{name}", dpi=100, bbox_inches="tight")
        saved.append(name)
        plt.close(fig)

def _cpu_time():
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"{out}/cpu_seconds.txt", "w") as f:
        f.write(str(ru.ru_utime + ru.ru_stime))

plt.show = _save_open_figures
atexit.register(_cpu_time)
atexit.register(_save_open_figures)
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


def source_hash(path: Path) -> str:
    """SHA-256 of the example and of the library it runs (``unrollsci/``, bench excluded):
    a stored result is reused only while neither has changed."""
    h = hashlib.sha256(path.read_bytes())
    for f in sorted((ROOT / "unrollsci").rglob("*.py")):
        if "bench" not in f.relative_to(ROOT / "unrollsci").parts:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def example_paths(names: list[str] | None = None) -> list[Path]:
    paths = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    if names:
        known = {p.stem: p for p in paths}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown example(s) {unknown}; known: {sorted(known)}")
        paths = [known[n] for n in names]
    return paths


def is_current(path: Path, out: Path = DEFAULT_OUT, digest: str | None = None) -> bool:
    """Whether ``out/NAME/result.json`` exists and was made from this source (``digest``:
    its :func:`source_hash`, computed here when not given)."""
    result = out / path.stem / "result.json"
    if not result.exists():
        return False
    try:
        return json.loads(result.read_text())["sha256"] == (digest or source_hash(path))
    except (ValueError, KeyError):
        return False


def run_example(
    path: Path, out: Path = DEFAULT_OUT, threads: int | None = None, digest: str | None = None
) -> dict:
    """Run one example; write and return its ``result.json`` record.

    ``digest`` is the :func:`source_hash` to record (computed before the run when not given),
    so that a caller that hashed the sources once sees the same value afterwards.
    """
    digest = digest or source_hash(path)
    dest = out / path.stem
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("figure_*.png"), dest / "cpu_seconds.txt"]:
        old.unlink(missing_ok=True)
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"gallery-{path.stem}-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _WRAPPER, str(dest), str(path)],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT_S,
            )
            returncode, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as err:
            returncode = None
            partial = err.stdout or ""
            if isinstance(partial, bytes):
                partial = partial.decode(errors="replace")
            output = partial + f"\n[timed out after {TIMEOUT_S} s]"
    cpu_file = dest / "cpu_seconds.txt"
    cpu = round(float(cpu_file.read_text()), 1) if cpu_file.exists() else None
    record = {
        "name": path.stem,
        "source": str(path.relative_to(ROOT)),
        "sha256": digest,
        "returncode": returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": cpu,
        "output": output,
        "figures": sorted(p.name for p in dest.glob("figure_*.png")),
        "python": sys.executable,
    }
    tmp = dest / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(dest / "result.json")
    return record


def run_all(
    paths: list[Path],
    out: Path = DEFAULT_OUT,
    jobs: int = 2,
    digests: dict[Path, str] | None = None,
) -> list[dict]:
    """Run examples ``jobs`` at a time (one torch thread each when ``jobs > 1``)."""
    threads = 1 if jobs > 1 else None
    digests = digests or {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda p: run_example(p, out, threads, digests.get(p)), paths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="example names (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="rerun current results too")
    args = parser.parse_args(argv)
    paths = example_paths(args.names)
    todo = [p for p in paths if args.force or not is_current(p, args.out)]
    failed = []
    for rec in run_all(todo, args.out, args.jobs):
        status = "ok" if rec["returncode"] == 0 else f"FAILED ({rec['returncode']})"
        print(
            f"{rec['name']:24s} {status:12s} {rec['seconds']:7.1f} s wall, "
            f"{rec['cpu_seconds']} s cpu, {len(rec['figures'])} figure(s)"
        )
        if rec["returncode"] != 0:
            failed.append(rec["name"])
    print(f"{len(todo)} run, {len(paths) - len(todo)} current, results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
