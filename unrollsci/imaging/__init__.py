"""CT reconstruction: phantoms, noise, classical baselines, unrolled networks, certificates.

Example:
    >>> import torch
    >>> from unrollsci.imaging import Radon, fbp, shepp_logan
    >>> op = Radon(64, 60)
    >>> x = shepp_logan(64)[None]
    >>> fbp(op(x), op).shape
    torch.Size([1, 64, 64])
"""

from ..operators._fanbeam import FanBeam
from ..operators._radon import Radon
from ._analytic import ellipse_line_integrals, fanbeam_ellipse_sinogram, profiled_ellipse_image
from ._baselines import divergence2d, gradient2d, tikhonov_reconstruction, tv_reconstruction
from ._fanbeam_fbp import fanbeam_fbp
from ._fbp import FILTERS, fbp, filter_sinogram, ramp_filter
from ._lipschitz import (
    LipschitzCertificate,
    conv_operator_norm,
    empirical_lipschitz,
    lipschitz_bound,
)
from ._noise import gaussian_noise, poisson_noise
from ._phantoms import disk_mask, ellipse_image, random_ellipses, shepp_logan
from ._refine import LipschitzRefiner
from ._ridge import ConvexRidgeCT, ridge_filter_norm2
from ._symmetry import RadonSymmetry, radon_symmetries, self_ensemble
from ._unrolled import UnrolledCT

__all__ = [
    "FILTERS",
    "ConvexRidgeCT",
    "FanBeam",
    "LipschitzCertificate",
    "LipschitzRefiner",
    "Radon",
    "RadonSymmetry",
    "UnrolledCT",
    "conv_operator_norm",
    "disk_mask",
    "divergence2d",
    "ellipse_image",
    "ellipse_line_integrals",
    "empirical_lipschitz",
    "fanbeam_ellipse_sinogram",
    "fanbeam_fbp",
    "fbp",
    "filter_sinogram",
    "gaussian_noise",
    "gradient2d",
    "lipschitz_bound",
    "poisson_noise",
    "profiled_ellipse_image",
    "ramp_filter",
    "radon_symmetries",
    "random_ellipses",
    "ridge_filter_norm2",
    "self_ensemble",
    "shepp_logan",
    "tikhonov_reconstruction",
    "tv_reconstruction",
]
