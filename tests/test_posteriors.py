"""Unit tests for afa.posteriors: shapes, sampling vs density consistency, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from afa.posteriors import (
    POSTERIOR_FAMILIES,
    FullCovarianceGaussian,
    GaussianPosterior,
    make_partial_posterior,
)

FAMILIES = sorted(POSTERIOR_FAMILIES)
N_FEATURES = 3


def _posterior(family: str, latent_dim: int, seed: int = 0):
    torch.manual_seed(seed)
    return make_partial_posterior(family, N_FEATURES, latent_dim, (8,)).eval()


def _batch(n: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, N_FEATURES, generator=generator)
    mask = torch.rand(n, N_FEATURES, generator=generator) < 0.5
    mask[0] = True
    mask[1] = False
    return x, mask


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("latent_dim", [1, 3])
def test_forward_shapes(family, latent_dim):
    q = _posterior(family, latent_dim)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x, mask)
        assert dist.batch_shape == (5,)
        assert dist.event_shape == (latent_dim,)
        noise = torch.randn(11, 1, dist.noise_dim)
        z = dist.from_noise(noise)
        assert z.shape == (11, 5, latent_dim)
        assert torch.isfinite(z).all()
        z2, log_prob = dist.sample_with_log_prob(noise)
        assert z2.shape == (11, 5, latent_dim)
        assert log_prob.shape == (11, 5)
        assert dist.log_prob(z).shape == (11, 5)
        assert dist.log_prob(torch.zeros(5, latent_dim)).shape == (5,)
        assert dist.sample().shape == (5, latent_dim)
        assert dist.sample((2, 3)).shape == (2, 3, 5, latent_dim)


@pytest.mark.parametrize("family", FAMILIES)
def test_noise_dim(family):
    q = _posterior(family, 3)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x, mask)
    assert dist.noise_dim == (6 if family == "autoregressive" else 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_with_log_prob_matches_log_prob(family):
    q = _posterior(family, 3)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x, mask)
        noise = torch.randn(64, 1, dist.noise_dim, generator=torch.Generator().manual_seed(0))
        z, log_prob = dist.sample_with_log_prob(noise)
        assert torch.equal(z, dist.from_noise(noise))
        torch.testing.assert_close(log_prob, dist.log_prob(z), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_noise_per_row_noise(family):
    """Noise of shape (K, n, noise_dim) gives each row its own noise; (K, 1, .) shares it."""
    q = _posterior(family, 2)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x, mask)
        shared = torch.randn(4, 1, dist.noise_dim)
        z_shared = dist.from_noise(shared)
        z_expanded = dist.from_noise(shared.expand(4, 5, dist.noise_dim).clone())
    torch.testing.assert_close(z_shared, z_expanded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_normalises_1d(family):
    q = _posterior(family, 1)
    x, mask = _batch()
    grid = torch.linspace(-40, 40, 8_001)
    with torch.no_grad():
        dist = q(x[:2], mask[:2])
        density = dist.log_prob(grid[:, None, None].expand(-1, 2, 1)).exp()
    integral = torch.trapezoid(density.double(), grid.double(), dim=0)
    torch.testing.assert_close(integral, torch.ones(2, dtype=torch.float64), atol=1e-2, rtol=0)


def _grid_moments_2d(dist, low: torch.Tensor, high: torch.Tensor, n: int = 501):
    """Mass, mean and entropy of a one-row, 2-d distribution by quadrature on a box grid."""
    g0 = torch.linspace(float(low[0]), float(high[0]), n, dtype=torch.float64)
    g1 = torch.linspace(float(low[1]), float(high[1]), n, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    area = float(g0[1] - g0[0]) * float(g1[1] - g1[0])
    with torch.no_grad():
        log_prob = dist.log_prob(z.float()[:, None, :])[:, 0].double()
    p = log_prob.exp()
    mass = p.sum() * area
    mean = (p[:, None] * z).sum(0) * area
    entropy = -(p * log_prob).sum() * area
    return mass, mean, entropy


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_normalises_and_matches_sampling_2d(family):
    """The density integrates to one and its moments match draws made with from_noise."""
    q = _posterior(family, 2)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x[2:3], mask[2:3])
        noise = torch.randn(10_000, 1, dist.noise_dim, generator=torch.Generator().manual_seed(3))
        z, log_prob = dist.sample_with_log_prob(noise)
    z0 = z[:, 0].double()
    # integrate over a box comfortably larger than the sampled range
    low, high = z0.min(0).values - 3, z0.max(0).values + 3
    mass, mean, entropy = _grid_moments_2d(dist, low, high)
    assert abs(float(mass) - 1.0) < 1e-2
    std = z0.std(0)
    # sample mean within ~5 standard errors of the density's mean
    assert torch.all((z0.mean(0) - mean).abs() < 5 * std / math.sqrt(len(z0)) + 1e-2)
    # E_q[-log q] by sampling equals the entropy by quadrature
    mc_entropy = -log_prob[:, 0].double()
    tolerance = 5 * float(mc_entropy.std()) / math.sqrt(len(mc_entropy)) + 1e-2
    assert abs(float(mc_entropy.mean()) - float(entropy)) < tolerance


def test_gaussian_monte_carlo_entropy_matches_analytic():
    q = _posterior("gaussian", 3)
    x, mask = _batch()
    with torch.no_grad():
        dist = q(x, mask)
        assert isinstance(dist, FullCovarianceGaussian)
        noise = torch.randn(50_000, 1, 3, generator=torch.Generator().manual_seed(0))
        z, log_prob = dist.sample_with_log_prob(noise)
        analytic = dist.entropy()
        torch.testing.assert_close((-log_prob).mean(0), analytic, atol=0.03, rtol=0)
        torch.testing.assert_close(z.mean(0), dist.loc, atol=0.05, rtol=0)
        centred = z - dist.loc
        covariance = torch.einsum("kni,knj->nij", centred, centred) / z.shape[0]
        torch.testing.assert_close(covariance, dist.covariance_matrix, atol=0.1, rtol=0.05)


def test_gaussian_posterior_scale_tril_is_valid():
    q = _posterior("gaussian", 3)
    x, mask = _batch()
    with torch.no_grad():
        tril = q(x, mask).scale_tril
    assert torch.equal(tril, tril.tril())
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_are_independent(family):
    q = _posterior(family, 2)
    x, mask = _batch(n=6)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(7, 1, 4 if family == "autoregressive" else 2)
    with torch.no_grad():
        dist = q(x, mask)
        log_prob = dist.log_prob(z)
        draws = dist.from_noise(noise)
        x2, mask2 = x.clone(), mask.clone()
        x2[1:] = torch.randn(5, N_FEATURES) * 5
        mask2[1:] = ~mask2[1:]
        z2 = z.clone()
        z2[1:] += 1.0
        other = q(x2, mask2)
        alone = q(x[:1], mask[:1])
        torch.testing.assert_close(other.log_prob(z2)[0], log_prob[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.log_prob(z[:1])[0], log_prob[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other.from_noise(noise)[:, 0], draws[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.from_noise(noise)[:, 0], draws[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_unobserved_values_are_ignored(family):
    q = _posterior(family, 2)
    x, mask = _batch()
    x_nan = torch.where(mask, x, torch.full_like(x, float("nan")))
    x_other = torch.where(mask, x, x + 100.0)
    z = torch.randn(5, 2)
    with torch.no_grad():
        reference = q(x, mask).log_prob(z)
        torch.testing.assert_close(q(x_nan, mask).log_prob(z), reference)
        torch.testing.assert_close(q(x_other, mask).log_prob(z), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_posterior_depends_on_observed_values(family):
    q = _posterior(family, 2)
    x, mask = _batch()
    z = torch.randn(5, 2)
    with torch.no_grad():
        assert not torch.allclose(q(x, mask).log_prob(z)[0], q(x + 3.0, mask).log_prob(z)[0])


@pytest.mark.parametrize("family", ["gaussian", "flow", "spline"])
def test_reparameterised_families_pass_gradients(family):
    q = _posterior(family, 2)
    x, mask = _batch()
    dist = q(x, mask)
    z = dist.from_noise(torch.randn(3, 1, dist.noise_dim))
    z.sum().backward()
    grads = [p.grad for p in q.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_autoregressive_log_prob_trains_but_sampling_is_not_reparameterised():
    q = _posterior("autoregressive", 2)
    x, mask = _batch()
    dist = q(x, mask)
    assert dist.has_rsample is False
    z = dist.from_noise(torch.randn(3, 1, dist.noise_dim))
    assert not z.requires_grad
    dist.log_prob(z).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_unknown_family_raises_with_options():
    with pytest.raises(ValueError, match="nope") as info:
        make_partial_posterior("nope", 3, 2, (8,))
    for family in POSTERIOR_FAMILIES:
        assert family in str(info.value)


def test_gaussian_posterior_is_the_encoder_class():
    q = make_partial_posterior("gaussian", 3, 2, (8,))
    assert isinstance(q, GaussianPosterior)
    assert q.trunk.head.out_features == 2 + 3
