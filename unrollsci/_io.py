"""Safe file output: atomic writes and the never-overwrite rule.

Every file unrollsci writes goes through here:

* ``atomic_write``: the content is written to a temporary file in the destination's
  folder, flushed, then moved over the destination with ``os.replace`` (atomic on
  POSIX and Windows). A failure while writing leaves any previous file at that path
  untouched, and never leaves a half-written one.
* ``check_writable``: the command-line rule. An existing file is never written over
  unless ``force`` is given, and a file that is also an input is never written over.
* ``terminate_as_exit``: a command's SIGTERM becomes ``SystemExit(143)``, so that the
  temporary files of an unfinished write are removed as for Ctrl-C; ``run_command`` runs
  a command's main function with it (Ctrl-C: one line, exit status 130).
* ``never_replace``: for a command that checked its outputs at the start and writes them
  minutes later: inside it, a write to one of those paths ends with a hard link (which
  fails if a file appeared there meanwhile) instead of ``os.replace``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "OutputExistsError",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_folder",
    "check_writable",
    "never_replace",
    "publish",
    "run_command",
    "temp_prefix",
    "terminate_as_exit",
]

_NO_REPLACE: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar(
    "_NO_REPLACE", default=frozenset()
)


class OutputExistsError(FileExistsError):
    """An output file exists and ``--force`` / ``force=True`` was not given."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it onto ``path``.

    Use as ``with atomic_write(p) as f: f.write(...)``. If the block raises, the
    temporary file is removed and ``path`` is left as it was. SIGTERM too: in the main
    thread, where SIGTERM has its default action (it ends the process), the write runs
    under :func:`terminate_as_exit`, so a SIGTERM during it removes the temporary file and
    then ends the process as ``SystemExit(143)``; the previous handler is restored after
    the write. A handler the program installed is left in place (it decides), and so is
    SIGTERM's action in another thread (Python runs signal handlers in the main thread
    only): a SIGTERM that ends the process during a write from another thread leaves the
    temporary file (``.NAME.*.tmp`` next to ``path``; ``path`` itself is intact).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"Expected mode 'w' or 'wb' (got {mode!r}).")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    with _unwind_on_term():
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            publish(Path(tmp), path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _unwind_on_term() -> contextlib.AbstractContextManager[None]:
    """:func:`terminate_as_exit` where SIGTERM would otherwise end the process at once (its
    default action, in the main thread); else nothing (a program's own handler stays)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return contextlib.nullcontext()
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return contextlib.nullcontext()
    return terminate_as_exit()


#: bytes of the destination's name (encoded as the file system stores it) kept in a
#: temporary file's name: file systems limit a name to 255 bytes (not characters), and the
#: temporary name of a legal file name must be legal too
_TEMP_NAME_BYTES = 64


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of a temporary file written next to ``path`` (``.NAME.``, ``NAME`` cut
    to its first 64 bytes in the file system's encoding, never inside a character):
    hidden, recognizable, and short enough for any legal ``path`` (a name of 4-byte
    characters included)."""
    raw = os.fsencode(Path(path).name)[:_TEMP_NAME_BYTES]
    return f".{raw.decode(sys.getfilesystemencoding(), 'ignore')}."


def publish(tmp: Path, path: Path) -> None:
    """Move the finished temporary file ``tmp`` onto ``path``, with the permissions a plain
    ``open()`` gives (``mkstemp`` creates files 0600): an existing file's own permission
    bits (a private 0600 checkpoint stays 0600), ``0o666 & ~umask`` for a new file. Inside
    :func:`never_replace` for ``path``, a file that appeared there since the command checked
    its outputs is not replaced: ``OutputExistsError``, and ``tmp`` is removed."""
    os.chmod(tmp, _mode_for(path))
    if _key(path) not in _NO_REPLACE.get():
        os.replace(tmp, path)
        return
    appeared = OutputExistsError(
        f"Refusing to write over {path}: the file appeared while this command ran; pass "
        "--force to replace it or choose another output name."
    )
    try:
        try:
            os.link(tmp, path)  # atomic, and fails if path exists
        except FileExistsError:
            raise appeared from None
        except OSError:  # no hard links on this file system: check, then move
            if os.path.lexists(path):
                raise appeared from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def never_replace(paths: Iterable[str | os.PathLike], *, force: bool = False) -> Iterator[None]:
    """Within the block, writes to ``paths`` (through :func:`atomic_write` or
    :func:`publish`) never replace an existing file (see :func:`publish`); ``force=True``
    (the command's ``--force``): no effect."""
    if force:
        yield
        return
    token = _NO_REPLACE.set(_NO_REPLACE.get() | {_key(p) for p in paths})
    try:
        yield
    finally:
        _NO_REPLACE.reset(token)


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
    out (``--force`` or another name); a symbolic link there, even a dangling one, is an
    existing file; a directory in place of an output file raises
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
        if os.path.lexists(out) and not force:  # a link counts, even a dangling one
            what = "link" if os.path.islink(out) else "file"
            raise OutputExistsError(
                f"Refusing to write over the existing {what} {out}; pass --force to replace it "
                "or choose another output name."
            )


def check_output_folder(folder: str | os.PathLike, *, what: str = "the outputs") -> None:
    """Refuse, before any work, a folder that outputs could not be written into: the
    nearest existing one of ``folder`` and the folders above it must be a folder this user
    can write (``folder`` itself may not exist yet: it is created later). Raises
    ``NotADirectoryError`` or ``PermissionError`` naming it; nothing is created."""
    start = Path(folder) if str(folder) else Path(".")
    existing = start
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"Expected a folder for {what} (got the file {existing} in {start})."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Expected a writable folder for {what} (got {existing}, which this user cannot write)."
        )


def _mode_for(path: str | os.PathLike) -> int:
    """The permission bits a file written to ``path`` gets: those of the regular file there
    now (as an in-place ``open(path, "w")`` keeps them), else ``0o666 & ~umask``."""
    try:
        st = os.stat(path)
    except OSError:  # no file there (or a dangling link): a new file
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux:
    ``/proc/self/status``); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _key(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()


#: exit status of a command ended by SIGTERM (128 + 15, as a shell reports it)
EXIT_TERMINATED = 143
#: exit status of a command interrupted by Ctrl-C (128 + 2)
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` where the program is, so that
    ``finally`` blocks and context managers run (the temporary files of
    :func:`atomic_write` and of ``unrollsci relax`` are removed) instead of the process
    dying at once. The previous handler is restored on exit. Only in the main thread
    (elsewhere, and on a system without SIGTERM, no effect)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        # None: a handler not installed from Python; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_command(main: Callable[..., int | None], *args: Any) -> int:
    """``main(*args)`` as a command's body, its exit status returned: SIGTERM unwinds
    (:func:`terminate_as_exit`, exit status 143) and Ctrl-C prints one line
    ``interrupted`` instead of a traceback (130); temporary files are removed on the way.
    ``unrollsci``, ``unrollsci relax`` and the scripts in ``benchmarks/`` run through it."""

    try:
        with terminate_as_exit():
            return int(main(*args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
