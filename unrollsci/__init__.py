"""unrollsci: classical iterative algorithms as trainable, interpretable PyTorch networks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
