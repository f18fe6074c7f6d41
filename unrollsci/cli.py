"""The ``unrollsci`` command: ``demo``, ``bench NAME``, ``relax FILE``.

Each capability contributes a demo section and a benchmark through a module of
:mod:`unrollsci.bench` listed below (imported lazily: the library never imports
``unrollsci.bench``), so this file stays a thin dispatcher:

* demo section: ``run_demo(outdir: pathlib.Path) -> list[dict]`` rows for the table, and
  ``FIGURES: list[str]``, the files it writes into ``outdir`` (checked before anything runs);
* benchmark: ``main(argv: list[str] | None) -> int``.

No command writes over an existing file unless ``--force`` is given (benchmarks excepted:
replacing their results is their job; a ``--quick`` run writes ``NAME_quick.json``; the
trained models they save, ``--checkpoints`` / ``--save-models``, are not replaced without
``--force``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from . import __version__
from ._argtypes import output_dir_arg

#: (title, module) of each demo section, in the order they run.
DEMO_SECTIONS: list[tuple[str, str]] = [
    ("Classical solvers", "unrollsci.bench.demo.solvers"),
    ("LISTA vs ISTA", "unrollsci.bench.demo.unrolled"),
    ("Graph signal inversion", "unrollsci.bench.demo.graph"),
    ("Charge equilibration", "unrollsci.bench.demo.chem"),
    ("Learned preconditioner", "unrollsci.bench.demo.precond"),
    ("CT reconstruction", "unrollsci.bench.demo.imaging"),
]

#: benchmark name -> module with ``main(argv)``.
BENCHMARKS: dict[str, str] = {
    "solvers": "unrollsci.bench.solvers",
    "lista": "unrollsci.bench.lista",
    "graph": "unrollsci.bench.graph",
    "qeq": "unrollsci.bench.qeq",
    "qeq_pme": "unrollsci.bench.qeq_pme",
    "md": "unrollsci.bench.md",
    "precond": "unrollsci.bench.precond",
    "radon": "unrollsci.bench.radon",
    "ct": "unrollsci.bench.ct",
    "ct_certified": "unrollsci.bench.ct_certified",
    "structured": "unrollsci.bench.structured",
    "deblur": "unrollsci.bench.deblur",
    "amg": "unrollsci.bench.amg",
    "distributed": "unrollsci.bench.distributed",
}


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a missing section module is skipped; a broken import elsewhere is an error.
        if exc.name and module.startswith(exc.name):
            return False
        raise
    return True


def _section_name(module: str) -> str:
    """``--only`` name of a demo section: its module's last component."""
    return module.rsplit(".", 1)[1]


def _demo(args: argparse.Namespace) -> int:
    from ._io import OutputExistsError, check_output_folder, check_writable, never_replace

    markdown_table = importlib.import_module("unrollsci.bench._common").markdown_table

    outdir = Path(args.out)
    wanted = set(args.only or [])
    sections = [
        (title, module)
        for title, module in DEMO_SECTIONS
        if (not wanted or _section_name(module) in wanted) and _available(module)
    ]
    figures = [
        outdir / name
        for _, module in sections
        for name in getattr(importlib.import_module(module), "FIGURES", [])
    ]
    try:  # before any section runs: refuse to replace a figure without --force
        check_writable(figures, force=args.force)
        check_output_folder(outdir, what="the figures")  # an existing folder too
        outdir.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        print(f"unrollsci demo: error: {exc}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    print(f"unrollsci {__version__} demo; figures go to {outdir.resolve()}\n")
    # a figure that appears while the demo runs is not replaced either (without --force)
    try:
        with never_replace(figures, force=args.force):
            for title, module in sections:
                t0 = time.perf_counter()
                rows = importlib.import_module(module).run_demo(outdir)
                print(f"## {title}  ({time.perf_counter() - t0:.1f} s)\n")
                print(markdown_table(rows))
                print()
    except OutputExistsError as exc:
        print(f"unrollsci demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"demo finished in {time.perf_counter() - t_all:.1f} s; figures in {outdir.resolve()}")
    return 0


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    module = BENCHMARKS.get(args.name)
    if module is None or not _available(module):
        known = ", ".join(k for k, m in BENCHMARKS.items() if _available(m))
        print(
            f"unrollsci bench: error: unknown benchmark {args.name!r}; available: {known}",
            file=sys.stderr,
        )
        return 2
    # the benchmark refuses a results path it could not write before it runs (parse_bench_args)
    bench_main = importlib.import_module(module).main
    common = importlib.import_module("unrollsci.bench._common")
    try:
        return int(bench_main(rest) or 0)
    except common.BenchInputError as exc:  # an input file found bad during the run
        print(f"unrollsci bench {args.name}: error: {exc}", file=sys.stderr)
        return 2


def _relax(argv: list[str]) -> int:
    module = "unrollsci.chem._cli"
    if not _available(module):
        print(
            "unrollsci relax: error: needs unrollsci.chem, which is not available", file=sys.stderr
        )
        return 2
    return int(importlib.import_module(module).relax_main(argv) or 0)


EPILOG = """\
exit status: 0 success; 1 relax did not converge (or a benchmark's check failed);
2 usage error (a bad argument, or an output file that exists: pass --force or choose
another name; an input is never written over); 3 relax input or computation error;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM): temporary files are removed.
'unrollsci relax -h' details relax's codes. 'bench NAME --quick' writes NAME_quick.json,
never the full results NAME.json."""


def main(argv: list[str] | None = None) -> int:
    """Run the ``unrollsci`` command line (``demo``, ``bench NAME``, ``relax FILE``).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success; the codes are listed in ``unrollsci --help``).

    Example:
        >>> main(["bench", "no-such-benchmark"])  # prints the known names to stderr
        2
    """
    from ._io import run_command

    # SIGTERM and Ctrl-C unwind, so that temporary files are removed on the way
    return run_command(_main, sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "relax":
        # relax parses its own arguments, in any order (options before the file too)
        return _relax(argv[1:])
    parser = argparse.ArgumentParser(
        prog="unrollsci",
        description="Algorithm unrolling for scientific inverse problems.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unrollsci {__version__}")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="run a short tour of every capability (< 1 minute)")
    p_demo.add_argument(
        "--out", type=output_dir_arg, default="unrollsci-demo", help="folder for figures (PNG)"
    )
    p_demo.add_argument(
        "--only",
        nargs="*",
        choices=[_section_name(m) for _, m in DEMO_SECTIONS],
        metavar="SECTION",
        help="sections to run: " + ", ".join(_section_name(m) for _, m in DEMO_SECTIONS),
    )
    p_demo.add_argument(
        "--force", action="store_true", help="replace figures of an earlier run in --out"
    )
    # add_help=False: '-h' after the name reaches the benchmark's own parser; 'bench -h'
    # (no name) prints this parser's help below.
    p_bench = sub.add_parser(
        "bench",
        add_help=False,
        usage="%(prog)s [-h] NAME [options]",
        help="run a benchmark and write benchmarks/results/NAME.json",
        description="Run the benchmark NAME and write benchmarks/results/NAME.json\n"
        "('unrollsci bench NAME --help' lists its options).",
        epilog="exit status: 0 success; 1 a benchmark's check failed; 2 usage error (a bad\n"
        "argument, or a results path that cannot be written). 'bench NAME --quick' writes\n"
        "NAME_quick.json, never the full results NAME.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_bench.add_argument("name", nargs="?", metavar="NAME", help=", ".join(BENCHMARKS))
    p_relax = sub.add_parser(
        "relax", add_help=False, help="relax a structure with QEq + short-range repulsion"
    )
    p_relax.add_argument("file", help="any structure file ASE reads")  # for the help only
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _demo(args)
    if args.command == "bench":
        if args.name is None:
            if rest[:1] in (["-h"], ["--help"]):
                p_bench.print_help()
                return 0
            p_bench.error("the following arguments are required: NAME")
        return _bench(args, rest)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
