"""unrollsci: classical iterative algorithms as trainable, interpretable PyTorch networks."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# No process-wide warnings filter here: torch's once-per-process notice that sparse CSR
# tensors are "in beta" is silenced by a local warnings.catch_warnings() where unrollsci
# builds one (a user's own warnings filters are left as they are).

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
