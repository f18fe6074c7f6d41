"""argparse ``type=`` functions shared by every command line of the package.

A bad value makes argparse exit with status 2 and one line (``error: argument --x: ...``),
never a traceback. No torch import at module level, so ``unrollsci --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "device_arg",
    "existing_dir_arg",
    "existing_file_arg",
    "float_arg",
    "int_arg",
    "output_dir_arg",
    "positive_int_arg",
]


def int_arg(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer ``>= minimum`` (and ``<= maximum`` when given)."""
    what = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {what}, got {text!r}")
        return value

    return parse


def float_arg(
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    inf: bool = False,
) -> Callable[[str], float]:
    """A finite number: ``> 0`` when ``positive``, ``>= minimum`` and ``<= maximum`` when
    given; ``inf`` also accepts ``inf`` (positive infinity, e.g. a noiseless SNR)."""
    bounds = (["> 0"] if positive else []) + ([f">= {minimum:g}"] if minimum is not None else [])
    bounds += [f"<= {maximum:g}"] if maximum is not None else []
    what = "number" + (" " + " and ".join(bounds) if bounds else "")
    expected = f"expected a finite {what}" + (" or 'inf'" if inf else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if inf and value == math.inf:
            return value
        if (
            not math.isfinite(value)
            or (positive and value <= 0)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    return parse


def existing_file_arg(text: str) -> str:
    """The name of an existing file (not a folder); returned as given."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    return text


def existing_dir_arg(text: str) -> str:
    """The name of an existing folder; returned as given."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


#: an integer >= 1 (counts, sizes)
positive_int_arg = int_arg(1)


def device_arg(text: str) -> str:
    """The name of a torch device that exists on this machine.

    Returns the text (a string keeps a results file's config JSON-serializable).
    """
    from ._validation import check_device

    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def output_dir_arg(text: str) -> str:
    """A folder for outputs; refused if it (or a folder above it) is an existing file."""
    path = Path(text)
    for folder in (path, *path.parents):  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{str(folder)!r} is an existing file, not a folder"
                )
            break
    return text
