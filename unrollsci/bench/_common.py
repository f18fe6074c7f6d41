"""Small helpers for benchmark scripts: results files, figures, markdown tables, timers.

Every file a benchmark or demo writes goes through ``write_results``, ``save_figure`` or
``write_text`` here, which write atomically (a temporary file moved into place). A
``--quick`` run writes ``<name>_quick.json`` (and ``<figure>_quick.png``): it never
replaces the results of a full run.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, atomic_write_text, check_output_folder

__all__ = [
    "markdown_table",
    "check_results_paths",
    "parse_bench_args",
    "BenchInputError",
    "check_output_file",
    "read_input",
    "read_json_input",
    "write_results",
    "results_name",
    "figure_path",
    "save_figure",
    "write_text",
    "Timer",
    "machine_info",
    "device_arg",
    "keep_caller_rng",
    "new_figure",
    "tab20",
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
    ``ValueError`` when ``name`` names a folder too (``sub/x``), ``IsADirectoryError`` when
    one is a directory, ``NotADirectoryError`` when ``outdir`` (or a folder above it) is a
    file, ``PermissionError`` when the nearest existing folder of ``outdir`` cannot be
    written. Nothing is created. Command lines report the error with
    ``parser.error`` (exit status 2).
    """
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(
            f"Expected a results name without a folder (got {name!r}); choose the folder "
            "with --out."
        )
    stem = results_name(name, quick)
    paths = [Path(outdir) / f"{stem}{suffix}" for suffix in suffixes]
    for path in paths:
        check_output_file(path)
    check_output_folder(outdir, what="the results")
    return paths


class BenchInputError(ValueError):
    """An input file of a benchmark is missing, unreadable or of the wrong kind; the
    message (one line) names the file."""


def read_input(
    path: str | os.PathLike,
    reader: Callable[[Path], Any],
    what: str = "file",
    *,
    fork_rng: bool = False,
) -> Any:
    """``reader(path)``, with any failure (a missing, corrupt or wrong-kind file) raised as
    :class:`BenchInputError`, one line naming the file and what went wrong. With
    ``fork_rng`` (a check before the run, which reads the file again later), the global
    random state is left as it was: a model built while reading draws from a fork."""
    path = Path(path)
    if not path.exists():
        raise BenchInputError(f"{what} {str(path)!r}: no such file")
    try:
        with torch.random.fork_rng(devices=[], enabled=fork_rng):
            return reader(path)
    except BenchInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise BenchInputError(f"cannot use {what} {str(path)!r}: {reason}") from None


def read_json_input(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """A JSON object read from ``path`` (:func:`read_input`: a bad file is one line)."""

    def load(p: Path) -> dict[str, Any]:
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return data

    return read_input(path, load, what)


def parse_bench_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    name: str | Callable[[argparse.Namespace], str | Sequence[str] | None],
    *,
    check: Callable[[argparse.Namespace], None] | None = None,
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then :func:`check_results_paths` for the results the run
    will write (``<--out>/<name>[_quick].json`` and ``.md``), before any work: a path it
    could not write at the end is refused with ``parser.error`` (one line, exit status 2),
    whether the benchmark runs as ``unrollsci bench NAME`` or as ``benchmarks/NAME.py``.

    ``name`` is the results name, or a function of the parsed arguments returning it (its
    ``--name`` option, a name that depends on the mode), a list of names, or None for a
    mode that writes no results file. ``check(args)``, called last, checks the run's other
    inputs and outputs (model files, checkpoints, folders) and may read them into ``args``;
    an ``OSError``, ``ValueError`` (:class:`BenchInputError`) or ``TypeError`` it raises is
    reported the same way.
    """
    args = parser.parse_args(argv)
    names = name(args) if callable(name) else name
    for stem in [] if names is None else [names] if isinstance(names, str) else names:
        try:
            check_results_paths(
                stem, args.out, quick=bool(getattr(args, "quick", False)), suffixes=(".json", ".md")
            )
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    if check is not None:
        try:
            check(args)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(str(exc))
    return args


def check_output_file(path: Path, *, what: str = "the results", option: str = "--out") -> None:
    """An output file path must not be a directory (``os.replace`` onto it fails only after
    the whole run): ``IsADirectoryError`` naming it, ``what`` it was for and the ``option``
    that chooses its folder."""
    if path.is_dir():
        raise IsADirectoryError(
            f"Expected a file path for {what} (got the directory {path}); remove it or "
            f"choose another {option}."
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
    check_output_file(path)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": stem, "machine": machine_info(), **data}
    atomic_write_text(path, json_text(payload))
    return path


def json_text(data: Any) -> str:
    """``data`` as indented JSON. Strict JSON (RFC 8259) has no token for non-finite
    floats: NaN is written as ``null``, an infinity as the string ``"inf"`` or ``"-inf"``
    (``float()`` reads it back; a noiseless SNR, a break-even that never comes)."""
    return json.dumps(_finite(data), indent=2, default=_default, allow_nan=False)


def _default(obj: Any) -> Any:
    """Numbers JSON does not know (numpy / torch scalars) as Python floats, non-finite as
    :func:`_finite` writes them."""
    return _finite(float(obj))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig`` to a temporary file moved onto ``path`` (format from the extension)."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = kwargs.pop("format", None) or (path.suffix.lstrip(".").lower() or "png")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, **kwargs)
    return path


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """``(figure, axes)``: a new :class:`matplotlib.figure.Figure` and its
    ``Figure.subplots(nrows, ncols, **kwargs)`` (``figsize`` goes to the figure), drawn
    without pyplot: the process's matplotlib backend is left as it is and no figure stays
    open (save it with :func:`save_figure`). ImportError without matplotlib."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def tab20(i: int) -> Any:
    """Colour ``i % 20`` of matplotlib's ``tab20`` map (without pyplot)."""
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def keep_caller_rng(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run on a copy of torch's global random state (CPU, and every CUDA device once
    CUDA is initialized): the seeds it sets give the same results, and the caller's stream
    continues where it was (a test or a user importing a benchmark helper)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            return fn(*args, **kwargs)

    return wrapper


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
        fig, ax = new_figure(figsize=(5, 3.5))
    except ImportError:
        return None
    xs = [r[x] for r in rows]
    for key, label in series:
        if key in rows[0]:
            ax.loglog(xs, [r[key] for r in rows], "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


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
