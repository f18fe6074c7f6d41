"""Families of sparse SPD systems with seeded generators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._validation import check_count, check_positive
from ._sparse import check_spd_input

__all__ = [
    "diffusion2d",
    "anisotropic2d",
    "graph_laplacian",
    "matrix_family",
    "load_matrices",
    "FAMILIES",
]


def _grid_faces(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n * n).reshape(n, n)
    right = np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()])
    down = np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()])
    return right, down


def _check_real(name: str, value: Any) -> float:
    """A finite real number (any sign), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Expected '{name}' to be a real number (got {type(value).__name__}).")
    if not np.isfinite(value):
        raise ValueError(f"Expected '{name}' to be finite (got {value!r}).")
    return float(value)


def diffusion2d(n: int, sigma: float = 1.0, *, shift: float = 1e-2, seed: int | None = 0) -> Any:
    """Cell-centred finite-volume ``-div(k grad u) + c u`` on an ``n x n`` grid.

    The cell coefficients are log-normal, ``k = exp(sigma * xi)`` with i.i.d.
    standard normal ``xi``; faces use the harmonic mean of the two cells, the
    boundary is Dirichlet (a half cell away). ``shift`` adds ``shift * mean(diag)``
    to the diagonal (a small reaction term). ``sigma = 0`` gives the Poisson matrix.

    Args:
        n: grid size (``n^2`` unknowns).
        sigma: standard deviation of ``log k``.
        shift: relative diagonal shift (>= 0).
        seed: random seed.

    Returns:
        scipy CSR ``(n^2, n^2)`` SPD matrix.

    Example:
        >>> A = diffusion2d(16, sigma=1.0, seed=0)
        >>> A.shape
        (256, 256)
    """
    import scipy.sparse as sp

    n = check_count("n", n, 2)
    sigma = check_positive("sigma", sigma, allow_zero=True)
    shift = check_positive("shift", shift, allow_zero=True)
    rng = np.random.default_rng(seed)
    right, down = _grid_faces(n)
    faces = np.concatenate([right, down], axis=1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        k = np.exp(sigma * rng.standard_normal(n * n))  # a huge sigma is refused below
        kf = 2.0 * k[faces[0]] * k[faces[1]] / (k[faces[0]] + k[faces[1]])
    N = n * n  # noqa: N806
    diag = np.zeros(N)
    np.add.at(diag, faces[0], kf)
    np.add.at(diag, faces[1], kf)
    kk = k.reshape(n, n)
    bnd = np.zeros((n, n))
    bnd[0, :] += 2 * kk[0, :]
    bnd[-1, :] += 2 * kk[-1, :]
    bnd[:, 0] += 2 * kk[:, 0]
    bnd[:, -1] += 2 * kk[:, -1]
    diag += bnd.ravel()
    diag += shift * diag.mean()
    rows = np.concatenate([faces[0], faces[1], np.arange(N)])
    cols = np.concatenate([faces[1], faces[0], np.arange(N)])
    vals = np.concatenate([-kf, -kf, diag])
    if not np.all(np.isfinite(vals)) or not np.all(diag > 0):
        raise ValueError(
            f"Expected a sigma small enough for k = exp(sigma * xi) to stay finite and "
            f"positive in float64 (got sigma={sigma!r}, which over- or underflows)."
        )
    return sp.csr_matrix((vals, (rows, cols)), shape=(N, N))


def anisotropic2d(
    n: int,
    *,
    epsilon: float | None = None,
    theta: float | None = None,
    shift: float = 1e-3,
    seed: int | None = 0,
) -> Any:
    """Rotated anisotropic diffusion ``-div(K grad u)``, ``K = R diag(1, eps) R^T``, 9-point
    finite differences on an ``n x n`` grid with Dirichlet boundary.

    Without ``epsilon`` / ``theta`` they are drawn from the seed: ``eps`` log-uniform in
    ``[1e-3, 1e-1]`` and ``theta`` uniform in ``[0, pi)``. The stencil is SPD for every
    SPD ``K`` (but not an M-matrix, so IC(0) may need a shift).

    Returns:
        scipy CSR ``(n^2, n^2)``.
    """
    import scipy.sparse as sp

    n = check_count("n", n, 2)
    if epsilon is not None:
        check_positive("epsilon", epsilon)
    if theta is not None:
        _check_real("theta", theta)
    shift = check_positive("shift", shift, allow_zero=True)
    rng = np.random.default_rng(seed)
    eps = float(10 ** rng.uniform(-3, -1)) if epsilon is None else float(epsilon)
    th = float(rng.uniform(0, np.pi)) if theta is None else float(theta)
    c, s = np.cos(th), np.sin(th)
    axx = c * c + eps * s * s
    ayy = s * s + eps * c * c
    axy = (1 - eps) * c * s
    e = np.ones(n)
    d2 = sp.diags([-e[:-1], 2 * e, -e[:-1]], [-1, 0, 1], format="csr")
    d1 = sp.diags([-e[:-1], e[:-1]], [-1, 1], format="csr") * 0.5
    eye = sp.eye(n, format="csr")
    # -(axx u_xx + 2 axy u_xy + ayy u_yy); x varies fastest (kron(I, .)).
    a = axx * sp.kron(eye, d2) + ayy * sp.kron(d2, eye) - 2 * axy * sp.kron(d1, d1)
    a = sp.csr_matrix(a)
    a = a + shift * a.diagonal().mean() * sp.eye(n * n)
    a = sp.csr_matrix(a)
    a.eliminate_zeros()
    return a


def graph_laplacian(
    n: int, *, degree: float = 8.0, shift: float = 1e-2, seed: int | None = 0
) -> Any:
    """Weighted graph Laplacian plus a positive diagonal, on a random geometric graph.

    ``n^2`` points uniform in the unit square (``n`` is the side of an equivalent grid,
    so sizes match the grid families), joined when closer than the radius giving mean
    ``degree`` neighbours; edge weights log-normal (sigma 0.5); diagonal
    ``L + shift * mean(deg) * u`` with ``u`` uniform in ``[0.5, 1.5]``. Nodes are
    numbered in a row-by-row cell order (as a mesh generator would).

    Returns:
        scipy CSR ``(n^2, n^2)`` SPD matrix.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    n = check_count("n", n, 2)
    degree = check_positive("degree", degree)
    shift = check_positive("shift", shift)  # 0: L itself, singular (L 1 = 0), not SPD
    N = n * n  # noqa: N806
    rng = np.random.default_rng(seed)
    pts = rng.random((N, 2))
    cell = np.floor(pts * n).clip(0, n - 1)
    order = np.lexsort((pts[:, 0], cell[:, 0], cell[:, 1]))
    pts = pts[order]
    radius = np.sqrt(degree / (np.pi * N))
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray")
    w = np.exp(0.5 * rng.standard_normal(len(pairs)))
    i, j = pairs[:, 0], pairs[:, 1]
    W = sp.csr_matrix(
        (np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),  # noqa: N806
        shape=(N, N),
    )
    deg = np.asarray(W.sum(axis=1)).ravel()
    d = deg + shift * max(deg.mean(), 1e-12) * rng.uniform(0.5, 1.5, N)
    return sp.csr_matrix(sp.diags(d) - W)


def matrix_family(matrices: Sequence[Any]) -> list[Any]:
    """Validate a user list of sparse SPD matrices (scipy or torch) as a family.

    Returns:
        the matrices as scipy CSR float64. Raises ``ValueError`` naming the first
        bad matrix (non-square, non-symmetric, NaN, non-positive diagonal).
    """
    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, Sequence) or not matrices:
        raise ValueError("Expected a non-empty list of sparse matrices.")
    out = []
    for k, m in enumerate(matrices):
        out.append(check_spd_input(m, f"matrices[{k}]"))
    return out


_MATRIX_SUFFIXES = (".npz", ".mtx", ".mtx.gz")


def load_matrices(paths: str | Sequence[str]) -> tuple[list[Any], list[str]]:
    """Read a family of sparse SPD matrices from files, in a reproducible order.

    Args:
        paths: file names, glob patterns (``"run/step_*.npz"``) or directories (every
            matrix file inside). Files: ``.npz`` written by ``scipy.sparse.save_npz``, or
            Matrix Market ``.mtx`` / ``.mtx.gz``.

    Returns:
        the matrices (validated, scipy CSR float64) and their file names, sorted by file
        name (natural for time steps: ``step_2`` before ``step_10``).

    Raises:
        ValueError: no file matched, an unknown file type, or a matrix that is not square,
            symmetric, finite with a positive diagonal (the message names the file).
    """
    import glob
    import inspect
    import os
    import re

    import scipy.io
    import scipy.sparse as sp

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for pth in map(str, paths):
        if os.path.isdir(pth):
            hits = [os.path.join(pth, f) for f in os.listdir(pth) if f.endswith(_MATRIX_SUFFIXES)]
        else:
            hits = glob.glob(pth) if glob.has_magic(pth) else [pth]
        if not hits:
            raise ValueError(f"No matrix files match {pth!r}.")
        files.extend(hits)

    def natural(name: str) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    files = sorted(dict.fromkeys(files), key=natural)
    # scipy >= 1.18 warns unless asked which sparse type mmread returns; older ones lack the knob.
    has_knob = "spmatrix" in inspect.signature(scipy.io.mmread).parameters
    mm_kw = {"spmatrix": False} if has_knob else {}
    out = []
    for f in files:
        if not f.endswith(_MATRIX_SUFFIXES):
            raise ValueError(
                f"Expected matrix files ending in {', '.join(_MATRIX_SUFFIXES)} (got {f!r})."
            )
        if not os.path.isfile(f):
            raise ValueError(f"No such matrix file: {f!r}.")
        m = sp.load_npz(f) if f.endswith(".npz") else scipy.io.mmread(f, **mm_kw)
        m = sp.csr_matrix(m)  # sparse array, sparse matrix or dense -> one type downstream
        out.append(check_spd_input(m, f))
    return out, files


#: family name -> generator ``(n, seed) -> scipy CSR``.
FAMILIES: dict[str, Callable[..., Any]] = {
    "poisson": lambda n, seed: diffusion2d(n, 1.0, seed=seed),
    "anisotropic": lambda n, seed: anisotropic2d(n, seed=seed),
    "graph": lambda n, seed: graph_laplacian(n, seed=seed),
}
