import math

import pytest
import torch

from app.metrics import (
    RelativeH1,
    RelativeH1Loss,
    RelativeL2,
    RelativeL2Loss,
    relative_h1,
    relative_l2,
    spatial_gradients,
)


def test_relative_l2_matches_hand_computation():
    y = torch.tensor([[[3.0, 4.0]]])  # |y| = 5
    p = torch.tensor([[[3.0, 3.0]]])  # |p - y| = 1
    assert relative_l2(p, y).item() == pytest.approx(0.2)


def test_relative_l2_is_per_sample_then_averaged():
    y = torch.ones(2, 1, 4)
    p = y.clone()
    p[0] *= 2.0  # sample 0: error 1.0 relative; sample 1 exact
    metric = RelativeL2()
    metric.update(p, y)
    assert metric.compute().item() == pytest.approx(0.5)
    assert RelativeL2Loss()(p, y).item() == pytest.approx(0.5)


def test_complex_relative_l2_uses_modulus():
    y = torch.tensor([[[3.0 + 4.0j]]])
    p = torch.tensor([[[3.0 + 4.0j + 1.0j]]])
    assert relative_l2(p, y).item() == pytest.approx(0.2)


def test_finite_difference_gradient_is_exact_for_quadratics():
    x = torch.linspace(0, 1, 11)
    u = (x**2).view(1, 1, -1)
    (du,) = spatial_gradients(u, periodic=False)
    torch.testing.assert_close(du.view(-1), 2 * x, atol=1e-5, rtol=0)


def test_spectral_gradient_of_sine():
    n = 32
    x = torch.arange(n, dtype=torch.float64) / n
    u = torch.sin(2 * math.pi * 3 * x).view(1, 1, -1)
    (du,) = spatial_gradients(u, periodic=True)
    torch.testing.assert_close(du.view(-1), 6 * math.pi * torch.cos(2 * math.pi * 3 * x))


def test_h1_matches_hand_computation_2d():
    torch.manual_seed(0)
    y = torch.randn(3, 1, 9, 9, dtype=torch.float64)
    p = y + 0.1 * torch.randn_like(y)
    h = 1 / 8
    def sq(u):
        gx = torch.gradient(u, spacing=h, dim=2, edge_order=2)[0]
        gy = torch.gradient(u, spacing=h, dim=3, edge_order=2)[0]
        return (u**2 + gx**2 + gy**2).flatten(1).sum(1)
    expected = torch.sqrt(sq(p - y) / sq(y))
    torch.testing.assert_close(relative_h1(p, y), expected)


def test_h1_exceeds_l2_for_rough_errors_on_smooth_fields():
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 33)
    smooth = torch.sin(math.pi * x)[:, None] * torch.sin(math.pi * x)[None, :]
    y = smooth.expand(4, 1, 33, 33).clone()
    p = y + 0.01 * torch.randn_like(y)
    assert torch.all(relative_h1(p, y) > relative_l2(p, y))
    m_l2, m_h1 = RelativeL2(), RelativeH1()
    m_l2.update(p, y)
    m_h1.update(p, y)
    assert m_h1.compute() > m_l2.compute()


def test_complex_h1_and_loss_are_real_and_differentiable():
    y = torch.randn(2, 1, 16, dtype=torch.complex64)
    p = (y + 0.1 * torch.randn_like(y)).requires_grad_(True)
    loss = RelativeH1Loss(periodic=True)(p, y)
    assert not loss.is_complex()
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad.abs()).all()


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differs from target shape"):
        relative_l2(torch.zeros(1, 1, 4), torch.zeros(1, 1, 5))
