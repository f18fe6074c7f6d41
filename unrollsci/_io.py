"""Safe file output: atomic writes and the never-overwrite rule.

Every file unrollsci writes goes through here:

* ``atomic_write``: the content is written to a temporary file in the destination's
  folder, flushed, then moved over the destination with ``os.replace`` (atomic on
  POSIX and Windows). A failure while writing leaves any previous file at that path
  untouched, and never leaves a half-written one.
* ``check_writable``: the command-line rule. An existing file is never written over
  unless ``force`` is given, and a file that is also an input is never written over.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "OutputExistsError",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
]


class OutputExistsError(FileExistsError):
    """An output file exists and ``--force`` / ``force=True`` was not given."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it onto ``path``.

    Use as ``with atomic_write(p) as f: f.write(...)``. If the block raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"Expected mode 'w' or 'wb' (got {mode!r}).")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, writer: Callable[[IO[Any]], None]) -> Path:
    """Call ``writer(f)`` on a temporary binary file, then move it onto ``path``."""
    with atomic_write(path, "wb") as f:
        writer(f)
    return Path(path)


def check_writable(
    outputs: Iterable[str | os.PathLike],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> None:
    """Refuse to write over an input ever, or over an existing file without ``force``.

    Raises ``OutputExistsError`` (a ``FileExistsError``) naming the file and the way
    out (``--force`` or another name); a directory in place of an output file raises
    ``IsADirectoryError``. Two outputs naming the same file raise ``ValueError``.
    """
    ins = {_key(p) for p in inputs}
    seen: dict[Path, Path] = {}
    for out in outputs:
        out = Path(out)
        key = _key(out)
        if key in seen:
            raise ValueError(f"Two outputs name the same file: {out}")
        seen[key] = out
        if key in ins:
            raise OutputExistsError(
                f"Refusing to write {out}: it is an input of this command; "
                "choose another output name."
            )
        if out.is_dir():
            raise IsADirectoryError(f"Expected an output file path, but {out} is a directory.")
        if out.exists() and not force:
            raise OutputExistsError(
                f"Refusing to write over the existing file {out}; pass --force to replace it "
                "or choose another output name."
            )


def _key(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()
