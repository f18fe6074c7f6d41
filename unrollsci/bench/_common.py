"""Small helpers for benchmark scripts: results files, figures, markdown tables, timers.

Every file a benchmark or demo writes goes through ``write_results``, ``save_figure`` or
``write_text`` here, which write atomically (a temporary file moved into place). A
``--quick`` run writes ``<name>_quick.json`` (and ``<figure>_quick.png``): it never
replaces the results of a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, atomic_write_text

__all__ = [
    "markdown_table",
    "check_results_paths",
    "parse_bench_args",
    "write_results",
    "results_name",
    "figure_path",
    "save_figure",
    "write_text",
    "Timer",
    "machine_info",
    "device_arg",
    "output_dir_arg",
    "positive_int_arg",
]

QUICK_SUFFIX = "_quick"


def results_name(name: str, quick: bool = False) -> str:
    """The file stem a benchmark writes: ``name``, or ``name_quick`` for a ``--quick`` run."""
    if quick and not name.endswith(QUICK_SUFFIX):
        return name + QUICK_SUFFIX
    return name


def figure_path(outdir: str | os.PathLike, filename: str, quick: bool = False) -> Path:
    """``outdir/filename``, with ``_quick`` before the extension for a ``--quick`` run."""
    f = Path(filename)
    return Path(outdir) / (results_name(f.stem, quick) + f.suffix)


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU count, torch version, GPU name if any."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render a list of dicts as a markdown table (floats in compact form)."""
    if not rows:
        return "(no rows)"
    if columns is not None:
        cols = list(columns)
    else:  # union of keys, in first-seen order (a row may add a 'note')
        cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            a = abs(v)
            return f"{v:.3g}" if (a >= 1e-3 and a < 1e5) or a == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def check_results_paths(
    name: str,
    outdir: str | os.PathLike = "benchmarks/results",
    *,
    quick: bool = False,
    suffixes: Sequence[str] = (".json",),
) -> list[Path]:
    """Refuse, before a benchmark runs, results files it could not write at the end.

    Checks ``outdir/<name>[_quick]<suffix>`` for each suffix (the paths
    :func:`write_results` / :func:`write_report` write) and returns them. Raises
    ``IsADirectoryError`` when one is a directory, ``NotADirectoryError`` when ``outdir`` (or
    a folder above it) is a file, ``PermissionError`` when the nearest existing folder of
    ``outdir`` cannot be written. Nothing is created. Command lines report the error with
    ``parser.error`` (exit status 2).
    """
    stem = results_name(name, quick)
    paths = [Path(outdir) / f"{stem}{suffix}" for suffix in suffixes]
    for path in paths:
        _check_output_file(path)
    folder = Path(outdir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(
            f"Expected a folder for the results (got the file {folder} in --out {outdir})."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Expected a writable folder for the results (got {folder}, which this user "
            "cannot write)."
        )
    return paths


def parse_bench_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    name: str | Callable[[argparse.Namespace], str | Sequence[str] | None],
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then :func:`check_results_paths` for the results the run
    will write (``<--out>/<name>[_quick].json`` and ``.md``), before any work: a path it
    could not write at the end is refused with ``parser.error`` (one line, exit status 2),
    whether the benchmark runs as ``unrollsci bench NAME`` or as ``benchmarks/NAME.py``.

    ``name`` is the results name, or a function of the parsed arguments returning it (its
    ``--name`` option, a name that depends on the mode), a list of names, or None for a
    mode that writes no results file.
    """
    args = parser.parse_args(argv)
    names = name(args) if callable(name) else name
    if names is None:
        return args
    for stem in [names] if isinstance(names, str) else names:
        try:
            check_results_paths(
                stem, args.out, quick=bool(getattr(args, "quick", False)), suffixes=(".json", ".md")
            )
        except OSError as exc:
            parser.error(str(exc))
    return args


def _check_output_file(path: Path) -> None:
    """A results file path must not be a directory (``os.replace`` onto it fails only after
    the whole run): ``IsADirectoryError`` naming it."""
    if path.is_dir():
        raise IsADirectoryError(
            f"Expected a file path for the results (got the directory {path}); remove it or "
            "choose another --out."
        )


def write_results(
    name: str,
    data: dict[str, Any],
    outdir: str | os.PathLike = "benchmarks/results",
    *,
    quick: bool = False,
) -> Path:
    """Write ``data`` (plus machine info) to ``outdir/name.json`` and return the path.

    With ``quick=True`` the file is ``outdir/name_quick.json``, so that a smoke run never
    replaces a full run's results. The file is written atomically: an interrupted run
    leaves the previous file as it was.
    """
    out = Path(outdir)
    stem = results_name(name, quick)
    path = out / f"{stem}.json"
    _check_output_file(path)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": stem, "machine": machine_info(), **data}
    atomic_write_text(path, json.dumps(payload, indent=2, default=float))
    return path


def write_report(
    name: str, data: dict[str, Any], outdir: str | os.PathLike, *, quick: bool, markdown: str
) -> Path:
    """:func:`write_results`, then ``markdown`` next to it (``.md``), printed with the path."""
    path = write_results(name, data, outdir, quick=quick)
    write_text(path.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {path}")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (markdown table, report) atomically, creating its folder."""
    path = Path(path)
    _check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig`` to a temporary file moved onto ``path`` (format from the extension)."""
    path = Path(path)
    _check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = kwargs.pop("format", None) or (path.suffix.lstrip(".").lower() or "png")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, **kwargs)
    return path


def loglog_figure(
    rows: Sequence[dict[str, Any]],
    x: str,
    series: Sequence[tuple[str, str]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path | None:
    """A log-log plot of ``rows[i][key]`` against ``rows[i][x]`` for each ``(key, label)`` of
    ``series`` present in the rows, saved atomically to ``path``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r[x] for r in rows]
    for key, label in series:
        if key in rows[0]:
            ax.loglog(xs, [r[key] for r in rows], "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


# argparse types of the benchmark command lines (one home: unrollsci/_argtypes.py)
from .._argtypes import device_arg, output_dir_arg, positive_int_arg  # noqa: E402,F401


class Timer:
    """Context manager measuring wall time; synchronizes CUDA when used."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Timer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0
