"""Old name of :mod:`unrollsci.unrolled._models` (kept so that old imports keep working)."""

from ._models import LAMP, ADMMNet, UnrolledFISTA  # noqa: F401
