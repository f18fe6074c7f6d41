"""Sparse products of the certified bounds on the threads torch may use.

scipy's CSR product runs on one thread; torch's runs on ``torch.get_num_threads()``. The
bounds of :mod:`._certify` spend about half their time in products with ``H``, so on a
multi-core machine they take them from torch (same CSR arrays, no copy). Each row's sum is
still one thread's ``k``-term sum, so the rounding bound the proofs use, ``|fl(H u) - H u|
<= gamma_k (|H| u)`` (:func:`._local.gamma`), holds for either product.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["MIN_ROWS", "threaded"]

#: below this many rows the products stay in scipy (the threads do not pay for themselves)
MIN_ROWS = 20_000


class _Threaded:
    """``h @ x`` (scipy CSR ``h``, float64 numpy ``x`` of one or two dimensions) by torch."""

    def __init__(self, h: Any) -> None:
        self.shape = h.shape
        with warnings.catch_warnings():
            # read-only arrays (a problem's cached Hessian): the tensor is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in (h.indptr, h.indices)]
            data = torch.from_numpy(np.ascontiguousarray(h.data))
        self._t = torch.sparse_csr_tensor(
            *arrays,
            data,
            size=h.shape,
            check_invariants=False,  # scipy's canonical CSR: the caller's checked matrix
        )

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x))
        out = torch.mv(self._t, xt) if xt.dim() == 1 else self._t @ xt
        return out.numpy()


def threaded(h: Any) -> Any:
    """``h`` itself, or an object whose ``@`` gives ``h @ x`` from torch's threaded CSR
    product when torch may use more than one thread, ``h`` is large (:data:`MIN_ROWS`), in
    canonical float64 CSR form."""
    import scipy.sparse as sp

    ok = (
        torch.get_num_threads() > 1
        and h.shape[0] >= MIN_ROWS
        and sp.issparse(h)
        and h.format == "csr"
        and h.dtype == np.float64
        and h.has_canonical_format
    )
    return _Threaded(h) if ok else h
