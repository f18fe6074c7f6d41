"""argparse ``type=`` functions shared by every command line of the package.

A bad value makes argparse exit with status 2 and one line (``error: argument --x: ...``),
never a traceback. No torch import at module level, so ``unrollsci --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = ["device_arg", "float_arg", "int_arg", "output_dir_arg", "positive_int_arg"]


def int_arg(minimum: int) -> Callable[[str], int]:
    """An integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def float_arg(*, positive: bool) -> Callable[[str], float]:
    """A finite number (``> 0`` when ``positive``)."""
    what = "number > 0" if positive else "number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {text!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise argparse.ArgumentTypeError(f"expected a finite {what}, got {text!r}")
        return value

    return parse


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
