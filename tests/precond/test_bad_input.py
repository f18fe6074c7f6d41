"""Bad input to the classical preconditioners, the orderings and the matrix families."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import (
    anisotropic2d,
    candidate_orderings,
    chebyshev,
    diffusion2d,
    dropped_fill,
    graph_laplacian,
    ic0,
    jacobi,
    matrix_family,
    mic0,
    reorder,
    select_ordering,
)

EMPTY = r"non-empty square matrix \(got shape \(0, 0\)\)"


def _amg(a):
    pytest.importorskip("pyamg")
    from unrollsci.precond import amg

    return amg(a)


BUILDERS = [ic0, mic0, jacobi, chebyshev, _amg, lambda a: matrix_family([a])]


@pytest.mark.parametrize("build", BUILDERS)
def test_empty_matrix_is_a_value_error(build):
    with pytest.raises(ValueError, match=EMPTY):
        build(sp.csr_matrix((0, 0)))
    with pytest.raises(ValueError, match=EMPTY):
        build(torch.zeros(0, 0, dtype=torch.float64))


@pytest.mark.parametrize("build", BUILDERS)
def test_non_square_and_nan_matrices_are_value_errors(build):
    with pytest.raises(ValueError, match=r"to be square \(got shape \(2, 3\)\)"):
        build(sp.csr_matrix(np.ones((2, 3))))
    a = diffusion2d(4).tolil()
    a[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"to be finite \(got 1 NaN and 0 Inf entries\)"):
        build(sp.csr_matrix(a))


def test_complex_matrix_is_a_type_error():
    with pytest.raises(TypeError, match="Expected a real 'A'"):
        ic0(torch.eye(3, dtype=torch.complex128))


@pytest.mark.parametrize(
    "call",
    [
        lambda a: dropped_fill(a),
        lambda a: candidate_orderings(a, "rcm"),
        lambda a: reorder(a, "rcm"),
        lambda a: select_ordering(a, {"natural": np.arange(a.shape[0])}),
    ],
)
def test_ordering_functions_reject_bad_matrices(call):
    with pytest.raises(ValueError, match=r"non-empty square matrix \(got shape \(0, 0\)\)"):
        call(sp.csr_matrix((0, 0)))
    with pytest.raises(ValueError, match=r"non-empty square matrix \(got shape \(2, 3\)\)"):
        call(sp.csr_matrix(np.ones((2, 3))))
    a = diffusion2d(4).tolil()
    a[0, 1] = a[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"finite \(got 0 NaN and 2 Inf entries\)"):
        call(sp.csr_matrix(a))
    with pytest.raises(TypeError, match="scipy sparse matrix"):
        call(np.eye(3))


def test_dropped_fill_rejects_bad_sample_and_perm():
    a = diffusion2d(4)
    with pytest.raises(ValueError, match=r"'sample' >= 1 \(got 0\)"):
        dropped_fill(a, sample=0)
    with pytest.raises(ValueError, match="not a permutation"):
        dropped_fill(a, np.zeros(16, dtype=np.int64))
    # the checks do not change a valid answer: IC(0) on a tridiagonal matrix drops nothing
    tri = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(6, 6), format="csr")
    assert dropped_fill(tri) == (0.0, 0.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: diffusion2d(8, float("nan")), r"Expected 'sigma' to be finite \(got nan\)"),
        (lambda: diffusion2d(8, float("inf")), r"Expected 'sigma' to be finite"),
        (lambda: diffusion2d(8, -1.0), r"Expected 'sigma' >= 0"),
        (lambda: diffusion2d(8, shift=float("nan")), r"Expected 'shift' to be finite"),
        (lambda: diffusion2d(8, 1e4), r"sigma small enough"),
        (lambda: diffusion2d(1), r"Expected 'n' >= 2 \(got 1\)"),
        (lambda: anisotropic2d(8, epsilon=float("nan")), r"Expected 'epsilon' to be finite"),
        (lambda: anisotropic2d(8, epsilon=0.0), r"Expected 'epsilon' > 0"),
        (lambda: anisotropic2d(8, theta=float("inf")), r"Expected 'theta' to be finite"),
        (lambda: anisotropic2d(8, shift=-1.0), r"Expected 'shift' >= 0"),
        (lambda: graph_laplacian(8, degree=float("nan")), r"Expected 'degree' to be finite"),
        (lambda: graph_laplacian(8, degree=0.0), r"Expected 'degree' > 0"),
        (lambda: graph_laplacian(8, shift=float("inf")), r"Expected 'shift' to be finite"),
    ],
)
def test_family_parameters_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_family_size_must_be_an_integer():
    with pytest.raises(TypeError, match=r"Expected 'n' to be an integer \(got float 4.5\)"):
        diffusion2d(4.5)


def test_valid_family_parameters_still_give_finite_spd_matrices():
    for a in (diffusion2d(6, 30.0), anisotropic2d(6, epsilon=0.01, theta=-0.3), graph_laplacian(6)):
        d = a.toarray()
        assert np.all(np.isfinite(d))
        np.testing.assert_allclose(d, d.T, rtol=0, atol=1e-12 * abs(d).max())
        assert np.linalg.eigvalsh(d)[0] > 0
    # sigma = 0 is the 5-point Poisson matrix with a Dirichlet half cell (diag 4 + boundary)
    p = diffusion2d(3, 0.0, shift=0.0).toarray()
    assert p[4, 4] == 4.0 and p[0, 0] == 6.0 and p[0, 1] == -1.0


def test_mic0_and_chebyshev_reject_nan_parameters():
    a = diffusion2d(4)
    with pytest.raises(ValueError, match=r"Expected 0 <= omega <= 1 \(got nan\)"):
        mic0(a, omega=float("nan"))
    with pytest.raises(TypeError, match=r"Expected 'degree' to be an integer \(got float nan\)"):
        chebyshev(a, degree=float("nan"))
    with pytest.raises(ValueError, match=r"Expected 0 < ratio < 1 \(got nan\)"):
        chebyshev(a, ratio=float("nan"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("build", [ic0, mic0, jacobi, chebyshev])
def test_cuda_device_without_cuda_is_a_value_error(build):
    with pytest.raises(ValueError, match="CUDA is not available"):
        build(diffusion2d(4), device="cuda")


def _random_symmetric(rng, n):
    m = sp.random(n, n, density=0.3, random_state=int(rng.integers(2**31)), format="csr")
    a = (m + m.T + n * sp.eye(n)).tocsr()
    a.sort_indices()
    return a


def test_symmetry_error_same_pattern_path_matches_dense():
    """symmetry_error's same-pattern CSR path (value arrays, no sparse subtraction) gives the
    max|A - A^T| and max|A| of the dense matrix, so check_symmetric (and check_spd_input)
    decide as the rule says: symmetric and round-off below the rule accepted, an asymmetric
    value refused; an explicit zero on one side only goes the general way, same result."""
    from unrollsci._validation import _same_pattern_asymmetry, check_symmetric, symmetry_error
    from unrollsci.precond._sparse import check_spd_input

    def dense_ref(m):
        d = m.toarray()
        return float(np.abs(d - d.T).max()), float(np.abs(d).max())

    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 25))
        a = _random_symmetric(rng, n)
        assert _same_pattern_asymmetry(a) is not None
        assert symmetry_error(a)[:2] == dense_ref(a)
        coo = a.tocoo()
        off = np.flatnonzero(coo.row != coo.col)
        if off.size == 0:
            continue
        k = int(off[rng.integers(off.size)])
        for delta, ok in ((1e-3, False), (1e-15 * abs(a.data).max(), True)):
            b = a.copy()
            b.data[k] += delta
            assert _same_pattern_asymmetry(b) is not None
            assert symmetry_error(b)[:2] == pytest.approx(dense_ref(b), rel=1e-12, abs=0)
            if ok:
                check_symmetric(b)
                check_spd_input(b)
            else:
                with pytest.raises(ValueError, match="symmetric"):
                    check_symmetric(b)
                with pytest.raises(ValueError, match="symmetric"):
                    check_spd_input(b)
        if a[0, n - 1] == 0:  # an explicit zero in (0, n-1) only: symmetric values
            c = sp.csr_matrix(
                (np.r_[coo.data, 0.0], (np.r_[coo.row, 0], np.r_[coo.col, n - 1])),
                shape=a.shape,
            )
            c.sort_indices()
            assert _same_pattern_asymmetry(c) is None
            assert symmetry_error(c)[:2] == dense_ref(c)
            check_spd_input(c)  # the general check accepts it
