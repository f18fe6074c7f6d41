"""unrollsci: classical iterative algorithms as trainable, interpretable PyTorch networks."""

from __future__ import annotations

__version__ = "0.1.0"

from ._validation import ConvergenceError, ConvergenceWarning, UnrollsciWarning  # noqa: E402

__all__ = ["ConvergenceError", "ConvergenceWarning", "UnrollsciWarning", "__version__"]
