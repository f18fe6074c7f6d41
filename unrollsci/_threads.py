"""torch single-threaded around single-threaded host kernels (numpy, scipy, PyAMG).

After each parallel operation torch's idle worker threads keep spinning for a while, and on
a machine with few cores they compete with the single-threaded numpy work that follows; a
loop that alternates the two (the library's CG around a PyAMG cycle, scipy's ``cg`` around
a preconditioner of this package) runs several times slower at torch's default thread
count than at one thread (``benchmarks/cg_threads.py``). The callers decide when; this
module only switches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_serial"]


@contextmanager
def torch_serial(active: bool) -> Iterator[None]:
    """torch single-threaded inside the block when ``active`` (and torch has more than one
    thread); the thread count is restored on exit, also after an error. Process-global, as
    ``torch.set_num_threads`` is."""
    threads = torch.get_num_threads()
    if not active or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
