"""Imports of third-party packages that warn at import time on some versions.

torch_geometric calls ``torch.jit.script`` while it imports, which torch 2.13 deprecates
(``DeprecationWarning``) and torch 2.14 deprecates louder (``FutureWarning``). That is
torch_geometric's business, not the user's: the import is made here, once, with those two
categories silenced for the duration of the import only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["message_passing", "quiet_csr", "quiet_import"]


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Silence ``DeprecationWarning``/``FutureWarning`` while a third-party package imports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


@contextlib.contextmanager
def quiet_csr() -> Iterator[None]:
    """Silence torch's once-per-process notices that sparse CSR tensors are "in beta" and
    that their invariant checks are "implicitly disabled" while unrollsci builds one (nothing
    a user can act on: unrollsci builds valid tensors; no process-wide filter is added)."""
    with warnings.catch_warnings():
        for message in (
            r".*[Ss]parse CSR tensor support is in beta",
            r".*[Ss]parse invariant checks are implicitly disabled",
        ):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def message_passing() -> Any:
    """``torch_geometric.nn.MessagePassing``, imported without its import-time deprecations."""
    with quiet_import():
        from torch_geometric.nn import MessagePassing
    return MessagePassing
