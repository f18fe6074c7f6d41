"""Import torch_geometric once through unrollsci.graph, which silences the DeprecationWarning
that torch_geometric's import raises under recent torch (torch.jit.script is deprecated; the
warning is attributed to torch.jit, so pyproject's torch_geometric filter misses it)."""

import unrollsci.graph  # noqa: F401
