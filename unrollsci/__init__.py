"""unrollsci: classical iterative algorithms as trainable, interpretable PyTorch networks."""

from __future__ import annotations

import warnings
from typing import Any

__version__ = "0.1.0"

# torch announces, once per process, that sparse CSR tensors are "in beta" the first time one
# is built; unrollsci builds them internally (graph controllers, sparse operators, QEq), so the
# notice says nothing a user can act on. Only that exact message is hidden.
warnings.filterwarnings(
    "ignore", message=r"Sparse CSR tensor support is in beta state", category=UserWarning
)

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "DtypeMismatchError",
    "PolarizationCatastropheError",
    "UnrollsciWarning",
    "__version__",
]

_LAZY = {"ConvergenceError", "ConvergenceWarning", "DtypeMismatchError", "UnrollsciWarning"}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import unrollsci` (and `unrollsci --help`) does not import torch.
    if name in _LAZY:
        from . import _validation

        return getattr(_validation, name)
    if name == "PolarizationCatastropheError":
        from .chem._hardness import PolarizationCatastropheError

        return PolarizationCatastropheError
    raise AttributeError(f"module 'unrollsci' has no attribute {name!r}")
