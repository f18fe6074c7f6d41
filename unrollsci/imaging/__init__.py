"""CT reconstruction: phantoms, noise, classical baselines, unrolled network, certificate.

Example:
    >>> import torch
    >>> from unrollsci.imaging import Radon, fbp, shepp_logan
    >>> op = Radon(64, 60)
    >>> x = shepp_logan(64)[None]
    >>> fbp(op(x), op).shape
    torch.Size([1, 64, 64])
"""

from ..operators._radon import Radon
from ._baselines import divergence2d, gradient2d, tikhonov_reconstruction, tv_reconstruction
from ._fbp import FILTERS, fbp, filter_sinogram, ramp_filter
from ._lipschitz import (
    LipschitzCertificate,
    conv_operator_norm,
    empirical_lipschitz,
    lipschitz_bound,
)
from ._noise import gaussian_noise, poisson_noise
from ._phantoms import disk_mask, ellipse_image, random_ellipses, shepp_logan
from ._symmetry import RadonSymmetry, radon_symmetries, self_ensemble
from ._unrolled import UnrolledCT

__all__ = [
    "FILTERS",
    "LipschitzCertificate",
    "Radon",
    "RadonSymmetry",
    "UnrolledCT",
    "conv_operator_norm",
    "disk_mask",
    "divergence2d",
    "ellipse_image",
    "empirical_lipschitz",
    "fbp",
    "filter_sinogram",
    "gaussian_noise",
    "gradient2d",
    "lipschitz_bound",
    "poisson_noise",
    "ramp_filter",
    "radon_symmetries",
    "random_ellipses",
    "self_ensemble",
    "shepp_logan",
    "tikhonov_reconstruction",
    "tv_reconstruction",
]
