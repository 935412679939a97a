"""PIF: permutation equivariance, its affine form, parameter count, and the activation option."""

import itertools

import pytest
import torch

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.models.pif import PIF


def _randomised(pif: PIF) -> PIF:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pif.parameters():
            p.copy_(torch.randn_like(p))
    return pif.eval()


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_pif_is_equivariant_to_channel_permutations(activation):
    pif = _randomised(PIF(activation))
    x = torch.randn(3, 12, 4, 5)
    perm = torch.randperm(12)
    torch.testing.assert_close(pif(x[:, perm]), pif(x)[:, perm], rtol=1e-5, atol=1e-6)


def test_pif_has_25_parameters_and_keeps_shape():
    pif = PIF()
    assert sum(p.numel() for p in pif.parameters()) == 25
    assert pif(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_affine_pif_equals_its_three_coefficients():
    pif = _randomised(PIF())
    coef = pif.affine_coefficients()
    x = torch.randn(2, 9, 3, 3, dtype=torch.float32)
    expected = coef.a * x - coef.b * x.mean(dim=1, keepdim=True) + coef.c
    torch.testing.assert_close(pif(x), expected, rtol=1e-5, atol=1e-5)


def test_pif_with_activation_is_not_affine():
    pif = _randomised(PIF("relu"))
    assert not pif.is_affine
    with pytest.raises(ValueError):
        pif.affine_coefficients()
    x = torch.randn(2, 9, 3, 3)
    # a non-affine map: phi(2x) != 2 phi(x) - phi(0) in general
    zero = torch.zeros_like(x)
    assert not torch.allclose(pif(2 * x), 2 * pif(x) - pif(zero), atol=1e-4)


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown PIF activation"):
        PIF("swishy")


def test_affine_fast_path_equals_the_pointwise_network_with_the_same_gradients():
    """The default PIF computes a*x - b*m + c from phi's weights; it must equal running phi itself."""
    pif = _randomised(PIF())
    x = torch.randn(2, 10, 3, 4, dtype=torch.float64, requires_grad=True)
    pif = pif.double()
    mean = x.mean(dim=1, keepdim=True)
    reference = pif.phi(torch.stack((x, x - mean), dim=2).reshape(20, 2, 12)).reshape(2, 10, 3, 4)
    torch.testing.assert_close(pif(x), reference)
    weights = torch.randn_like(reference)
    fast_grads = torch.autograd.grad((pif(x) * weights).sum(), [x, *pif.parameters()])
    slow_grads = torch.autograd.grad((reference * weights).sum(), [x, *pif.parameters()])
    for fast, slow in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast, slow)


def test_pif_with_an_activation_matches_the_formula_position_by_position():
    """phi(u_c) with u_c = [x_c, x_c - m] and the activation after the first two of the three layers,
    written out with plain matrix products for every channel and position."""
    torch.manual_seed(0)
    pif = PIF("tanh").eval()
    x = torch.randn(2, 5, 3, 4)
    layers = [(layer.weight[:, :, 0].detach(), layer.bias.detach()) for layer in pif.phi]
    expected = torch.empty_like(x)
    mean = x.mean(dim=1)
    for b, c, h, w in itertools.product(range(2), range(5), range(3), range(4)):
        u = torch.stack([x[b, c, h, w], x[b, c, h, w] - mean[b, h, w]])
        for index, (weight, bias) in enumerate(layers):
            u = weight @ u + bias
            if index < 2:
                u = torch.tanh(u)
        expected[b, c, h, w] = u[0]
    with torch.no_grad():
        torch.testing.assert_close(pif(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"choose none or one of: relu, gelu, silu, tanh$"):
        PIF("swish")
