"""UnrolledCT's Lipschitz certificate against the exact Lipschitz constant of a network whose
CNNs are linear and known (audit round "dec10").

The other certificate tests compare the bound with an adversarial lower estimate many times
below it, or with the same ``propagate_bound`` that builds it, so a certificate wrong by a
factor 2 to 6 (the CNN term halved or dropped, the gradient step's ``max(1, |1 - s n_a^2|)``
replaced by ``|1 - s n_a^2|``) passed them. Here every CNN is exactly ``[x, g] -> c x``
(identity-tap convolutions, LeakyReLU of slope 1, zero biases), so the whole network is a
linear map of the sinogram and its Lipschitz constant is the spectral norm of its Jacobian,
computed densely in float64 by autograd, with no use of the certificate's code.
"""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.imaging import Radon, UnrolledCT, lipschitz_bound

F64 = torch.float64
N, ANGLES = 16, 8

#: Slack of the certificate on this network (the comparison ``bound <= K * exact``). The
#: certificate bounds layer ``k`` by ``L + n_a / a + c * hypot(L, n_a^2 L + n_a / a)`` (unit
#: step): the CNN is charged for its whole input ``[x, g]``, whose two channels each move by
#: about ``L``, where the network's CNN reads ``x`` only (a factor up to ``sqrt(2)`` per layer
#: over the exact growth ``~(1 + c) L``); the start ``P(FBP(y))`` and the data term ``B^T y / a``
#: add by the triangle inequality, and the power-iteration norms carry a 1% margin (a
#: constant factor, taken as 1.15). The real certificate lies within ``0.79`` and ``0.33`` of
#: these bounds (exact/bound); one wrong by a factor 2 either way falls outside.
SLACK_START, SLACK_PER_LAYER = 1.15, math.sqrt(2.0)


@pytest.fixture(scope="module")
def radon():
    return Radon(N, ANGLES)


def _linear_model(radon: Radon, n_layers: int, c: float) -> UnrolledCT:
    """An UnrolledCT whose every CNN maps ``[x, g]`` to exactly ``c x`` (step 1)."""
    model = UnrolledCT(
        radon, n_layers=n_layers, channels=1, depth=2, negative_slope=1.0, init="fbp"
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero biases; step logits 0 give steps 1
        for blk in model.blocks:
            blk.convs[0].conv.weight[0, 0, 1, 1] = 1.0  # the x channel, centre tap
            blk.convs[1].conv.weight[0, 0, 1, 1] = c
    model.eval()
    return model


def _exact_lipschitz(model: UnrolledCT, radon: Radon) -> float:
    """Spectral norm of the (input-independent) Jacobian of the linear network."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(radon.out_shape, generator=g, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], y)
    return float(torch.linalg.matrix_norm(jac.reshape(N * N, -1), ord=2))


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("c", [0.0, 2.0, 10.0])
def test_certificate_is_sound_and_tight_on_a_linear_network(radon, c, n_layers):
    model = _linear_model(radon, n_layers, c)
    # the structure the slack is derived for: each CNN is c x, each step is 1
    z = torch.randn(2, 2, N, N, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        for blk in model.blocks:
            torch.testing.assert_close(blk(z)[:, 0], c * z[:, 0], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(model.step_sizes(), torch.ones(n_layers, dtype=F64))
    exact = _exact_lipschitz(model, radon)
    bound = lipschitz_bound(model)
    assert exact > 0
    assert exact <= bound * (1 + 1e-9), f"unsound: exact {exact:.6g} > certificate {bound:.6g}"
    slack = SLACK_START * SLACK_PER_LAYER**n_layers
    assert bound <= slack * exact, (
        f"vacuous: certificate {bound:.6g} > {slack:.3g} x exact {exact:.6g}"
    )


def test_certificate_layers_follow_the_cnn_constant(radon):
    """The per-layer CNN constant the certificate uses is the CNN's exact norm ``c`` (the
    FFT bound of a centre-tap convolution is exact)."""
    cert = lipschitz_bound(_linear_model(radon, 2, 2.0), details=True)
    assert [layer["cnn"] for layer in cert.layers] == pytest.approx([2.0, 2.0], rel=1e-12)
    assert [layer["step"] for layer in cert.layers] == pytest.approx([1.0, 1.0], rel=1e-15)
