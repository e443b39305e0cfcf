"""Unit tests for afa.models: likelihoods and the Posterior-Matching VAE."""

from __future__ import annotations

import math

import pytest
import torch

from afa.models import (
    BernoulliLikelihood,
    CorrelatedGaussianLikelihood,
    GaussianLikelihood,
    PosteriorMatchingVAE,
    make_likelihood,
)
from afa.posteriors import POSTERIOR_FAMILIES

# ---------------------------------------------------------------- likelihoods


def test_gaussian_likelihood_matches_torch_normal():
    torch.manual_seed(0)
    lik = GaussianLikelihood(3, scale="feature")
    with torch.no_grad():
        lik.raw_scale.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    x, out = torch.randn(4, 3), torch.randn(4, 3)
    expected = torch.distributions.Normal(out, lik.parameters_from(out)[1]).log_prob(x)
    torch.testing.assert_close(lik.element_log_prob(x, out), expected)
    assert torch.equal(lik.mean(out), out)


def test_heteroscedastic_likelihood_reads_mean_and_scale_from_the_decoder():
    lik = GaussianLikelihood(3, scale="heteroscedastic", min_scale=1e-3)
    assert lik.n_outputs(3) == 6
    x, out = torch.randn(4, 3), torch.randn(4, 6)
    mean, scale = lik.parameters_from(out)
    torch.testing.assert_close(mean, out[:, :3])
    assert torch.all(scale > 1e-3)
    assert not torch.allclose(scale[0], scale[1])  # the scale depends on the row's output
    expected = torch.distributions.Normal(mean, scale).log_prob(x)
    torch.testing.assert_close(lik.element_log_prob(x, out), expected)
    with pytest.raises(ValueError, match="scale"):
        GaussianLikelihood(3, scale="nope")


def test_gaussian_likelihood_initial_scale_and_floor():
    lik = GaussianLikelihood(2, scale="feature", min_scale=1e-3)
    out = torch.zeros(1, 2)
    torch.testing.assert_close(lik.parameters_from(out)[1], torch.full((2,), 1.0 + 1e-3))
    with torch.no_grad():
        lik.raw_scale.fill_(-1e4)
    assert torch.all(lik.parameters_from(out)[1] >= 1e-3)
    assert GaussianLikelihood(5, scale="shared").raw_scale.shape == (1,)


def test_gaussian_likelihood_sample():
    lik = GaussianLikelihood(2, scale="feature")
    out, noise = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 0.5]])
    expected = out + lik.parameters_from(out)[1] * noise
    torch.testing.assert_close(lik.sample(out, noise), expected)


def test_bernoulli_likelihood_matches_torch_bernoulli():
    torch.manual_seed(0)
    lik = BernoulliLikelihood(3)
    logits = torch.randn(5, 3) * 3
    x = (torch.rand(5, 3) < 0.5).float()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(lik.element_log_prob(x, logits), expected)
    torch.testing.assert_close(lik.mean(logits), torch.sigmoid(logits))


def test_bernoulli_likelihood_fractional_and_broadcast():
    lik = BernoulliLikelihood(2)
    logits = torch.randn(7, 4, 2)
    x = torch.rand(4, 2)
    p = torch.sigmoid(logits)
    expected = x * torch.log(p) + (1 - x) * torch.log1p(-p)
    result = lik.element_log_prob(x, logits)
    assert result.shape == (7, 4, 2)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_bernoulli_likelihood_sample_is_binary_with_right_rate():
    lik = BernoulliLikelihood(1)
    logits = torch.full((20_000, 1), math.log(0.3 / 0.7))
    draws = lik.sample(logits, torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0)))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert abs(draws.mean().item() - 0.3) < 0.02


def test_make_likelihood():
    assert isinstance(make_likelihood("gaussian", 3), GaussianLikelihood)
    assert isinstance(make_likelihood("bernoulli", 3), BernoulliLikelihood)
    with pytest.raises(ValueError, match="Unknown likelihood 'poisson'"):
        make_likelihood("poisson", 3)


# ---------------------------------------------------------------- VAE


@pytest.fixture
def correlated() -> tuple[CorrelatedGaussianLikelihood, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A correlated likelihood with a random correlation, outputs, rows and masks."""
    torch.manual_seed(0)
    likelihood = CorrelatedGaussianLikelihood(5)
    with torch.no_grad():
        likelihood.raw_factor.copy_(torch.randn(5, 5))
    output, x = torch.randn(4, 10), torch.randn(4, 5)
    mask = torch.tensor(
        [[1, 0, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool
    )
    return likelihood, output, x, mask


def _covariance(likelihood, output, row):
    scale = likelihood.parameters_from(output)[1][row]
    return scale[:, None] * likelihood.correlation() * scale[None, :]


def test_correlation_is_a_correlation_matrix(correlated):
    correlation = correlated[0].correlation().detach()
    torch.testing.assert_close(correlation.diagonal(), torch.ones(5))
    torch.testing.assert_close(correlation, correlation.T)
    assert torch.linalg.eigvalsh(correlation).min() > 0
    assert torch.equal(CorrelatedGaussianLikelihood(3).correlation(), torch.eye(3))


def test_correlated_log_prob_is_the_observed_marginal(correlated):
    likelihood, output, x, mask = correlated
    mean = likelihood.mean(output)
    with torch.no_grad():
        values = likelihood.log_prob(x, output, mask)
    for row in range(3):
        o = mask[row]
        covariance = _covariance(likelihood, output, row).detach()
        marginal = torch.distributions.MultivariateNormal(mean[row, o], covariance[o][:, o])
        torch.testing.assert_close(values[row], marginal.log_prob(x[row, o]).detach())
    assert values[3] == 0  # nothing observed
    with torch.no_grad():  # a fully observed batch takes the single-factorisation path
        complete = likelihood.log_prob(x[1:2], output[1:2], mask[1:2])
    torch.testing.assert_close(complete, values[1:2])


def test_correlated_conditional_mean_and_draws_match_the_gaussian_conditional(correlated):
    likelihood, output, x, mask = correlated
    mean = likelihood.mean(output).detach()
    n_draws = 100_000
    with torch.no_grad():
        centre = likelihood.conditional_mean(x, output, mask)
        draws = likelihood.conditional_sample(
            x, output.expand(n_draws, 4, 10), mask, torch.randn(n_draws, 1, 5)
        )
    assert torch.equal(draws[:, mask], x[mask].expand(n_draws, -1))
    for row in (0, 2, 3):
        o, u = mask[row], ~mask[row]
        covariance = _covariance(likelihood, output, row).detach()
        gain = covariance[u][:, o] @ torch.linalg.inv(covariance[o][:, o])
        expected_mean = mean[row, u] + gain @ (x[row, o] - mean[row, o])
        expected_covariance = covariance[u][:, u] - gain @ covariance[o][:, u]
        torch.testing.assert_close(centre[row, u], expected_mean, atol=1e-5, rtol=1e-5)
        assert torch.equal(centre[row, o], x[row, o])
        sample = draws[:, row][:, u]
        torch.testing.assert_close(sample.mean(0), expected_mean, atol=0.03, rtol=0)
        torch.testing.assert_close(torch.cov(sample.T), expected_covariance, atol=0.05, rtol=0.02)


def test_correlated_draws_have_the_model_variance_when_features_nearly_coincide():
    """The conditional variance is then near the jitter floor, where adding the jitter once
    more (as draws once did) doubles it."""
    likelihood = CorrelatedGaussianLikelihood(2)
    with torch.no_grad():
        likelihood.raw_factor.copy_(torch.tensor([[1.0, 0.0], [50.0, 1.0]]))
    output, x = torch.zeros(1, 4), torch.tensor([[0.7, 0.0]])
    mask = torch.tensor([[True, False]])
    with torch.no_grad():
        exact = likelihood.mean_conditional_covariance(x, output.unsqueeze(0), mask)[0, 1, 1]
        draws = likelihood.conditional_sample(
            x, output.expand(200_000, 1, 4), mask, torch.randn(200_000, 1, 2)
        )
    assert exact < 0.01
    assert draws[:, 0, 1].var().item() == pytest.approx(exact.item(), rel=0.03)


def test_identity_correlation_is_the_heteroscedastic_likelihood():
    correlated, factorised = (
        CorrelatedGaussianLikelihood(4),
        GaussianLikelihood(4, "heteroscedastic"),
    )
    x, mask = _batch(n=6, seed=3)
    output = torch.randn(2, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            correlated.log_prob(x, output, mask), factorised.log_prob(x, output, mask)
        )


def _vae(posterior="gaussian", **kwargs):
    torch.manual_seed(0)
    return PosteriorMatchingVAE(4, 2, (8,), posterior=posterior, **kwargs)


def _batch(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    mask = torch.rand(n, 4, generator=generator) < 0.7
    mask[:, 0] = True
    return x, mask


@pytest.mark.parametrize("posterior", sorted(POSTERIOR_FAMILIES))
def test_loss_is_finite_and_has_terms(posterior):
    vae = _vae(posterior)
    x, mask = _batch()
    loss, terms = vae.loss(x, mask, torch.Generator().manual_seed(0))
    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert set(terms) == {"elbo", "kl", "pm"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in terms.values())
    # loss = -elbo + pm_weight * pm at kl_weight 1
    assert float(loss.detach()) == pytest.approx(-terms["elbo"] + terms["pm"], rel=1e-5, abs=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in vae.encoder.parameters())
    assert all(p.grad is not None for p in vae.decoder.parameters())


def test_loss_is_reproducible_with_the_generator():
    vae = _vae()
    x, mask = _batch()
    a = vae.loss(x, mask, torch.Generator().manual_seed(1))
    b = vae.loss(x, mask, torch.Generator().manual_seed(1))
    assert float(a[0].detach()) == float(b[0].detach())
    assert a[1] == b[1]


def test_kl_is_non_negative_with_full_masks():
    vae = _vae()
    x = torch.randn(32, 4) * 3
    _, terms = vae.loss(x, torch.ones(32, 4, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert terms["kl"] >= 0.0


def test_kl_weight_and_pm_weight_enter_the_loss():
    x, mask = _batch()
    vae = _vae()
    full, terms = vae.loss(x, mask, torch.Generator().manual_seed(0), kl_weight=1.0)
    half, terms_half = vae.loss(x, mask, torch.Generator().manual_seed(0), kl_weight=0.5)
    assert terms == terms_half  # reported terms do not depend on the KL weight
    assert float((full - half).detach()) == pytest.approx(0.5 * terms["kl"], rel=1e-4, abs=1e-5)
    vae2 = _vae(pm_weight=0.0)
    loss0, terms0 = vae2.loss(x, mask, torch.Generator().manual_seed(0))
    assert float(loss0.detach()) == pytest.approx(-terms0["elbo"], rel=1e-5, abs=1e-5)


def _encoder_grads(**kwargs):
    vae = _vae(**kwargs)
    x, mask = _batch()
    loss, _ = vae.loss(x, mask, torch.Generator().manual_seed(0))
    loss.backward()
    return [p.grad.clone() for p in vae.encoder.parameters()]


def test_stop_gradient_keeps_pm_out_of_the_encoder():
    without_pm = _encoder_grads(pm_weight=0.0)
    stopped = _encoder_grads(pm_weight=1.0, stop_gradient=True)
    flowing = _encoder_grads(pm_weight=1.0, stop_gradient=False)
    for a, b in zip(without_pm, stopped, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(without_pm, flowing, strict=True))


def test_sparse_training_masks_reach_the_partial_posterior(monkeypatch):
    vae = _vae(training_mask="uniform", observed_fraction=(0.0, 0.25))
    seen = []
    original = vae.partial_posterior.forward
    monkeypatch.setattr(
        vae.partial_posterior, "forward", lambda x, mask: seen.append(mask) or original(x, mask)
    )
    x = torch.randn(500, 4)
    vae.loss(x, torch.ones_like(x, dtype=torch.bool), torch.Generator().manual_seed(0))
    counts = seen[0].sum(1)
    assert int(counts.max()) == round(0.25 * x.shape[1]) and int(counts.min()) == 0


def test_unknown_training_mask_raises():
    with pytest.raises(ValueError, match="training_mask"):
        _vae(training_mask="nope")


def test_unknown_posterior_raises():
    with pytest.raises(ValueError, match="posterior family"):
        _vae(posterior="nope")


def test_decoder_log_prob_counts_only_masked_entries():
    vae = _vae()
    x, mask = _batch()
    z = torch.randn(3, 6, 2)
    with torch.no_grad():
        value = vae.decoder_log_prob(x, mask, z)
        elementwise = vae.likelihood.element_log_prob(x, vae.decoder(z))
        x_nan = torch.where(mask, x, torch.full_like(x, float("nan")))
        value_nan = vae.decoder_log_prob(x_nan, mask, z)
    assert value.shape == (3, 6)
    torch.testing.assert_close(value, (elementwise * mask).sum(-1))
    assert torch.isfinite(value_nan).all()
    torch.testing.assert_close(value_nan, value)
    with torch.no_grad():
        empty = vae.decoder_log_prob(x_nan, torch.zeros_like(mask), z)
    assert torch.equal(empty, torch.zeros(3, 6))


@pytest.mark.parametrize("posterior", ["gaussian", "autoregressive"])
def test_log_conditional_zero_when_target_equals_observed(posterior):
    vae = _vae(posterior).eval()
    x, mask = _batch()
    target = torch.ones_like(mask)
    observed = mask.clone()
    observed[:3] = True  # rows 0..2: nothing to score
    encoder_noise = torch.randn(16, 1, 2)
    posterior_noise = torch.randn(16, 1, 4 if posterior == "autoregressive" else 2)
    with torch.no_grad():
        result = vae.log_conditional(x, target, observed, encoder_noise, posterior_noise)
    assert result.shape == (6,)
    assert torch.equal(result[:3], torch.zeros(3))
    assert torch.isfinite(result).all()
    scored = (target & ~observed).any(-1)
    assert torch.all(result[scored] != 0)


def test_log_conditional_with_nothing_observed_is_log_marginal():
    vae = _vae().eval()
    x, _ = _batch()
    target = torch.ones(6, 4, dtype=torch.bool)
    observed = torch.zeros(6, 4, dtype=torch.bool)
    noise = torch.randn(16, 1, 2)
    with torch.no_grad():
        result = vae.log_conditional(x, target, observed, noise, torch.randn(16, 1, 2))
        joint = vae.log_marginal(x, target, vae.encoder(x, target), noise)
    torch.testing.assert_close(result, joint)


def test_log_marginal_exact_for_linear_gaussian_with_true_posterior():
    """With the exact posterior as proposal, importance sampling is exact for every sample.

    Decoder x = W z + b with Gaussian noise sigma; prior N(0, I). The exact posterior is
    Gaussian, every importance weight equals p(x), and log_marginal must return log p(x).
    """
    torch.manual_seed(0)
    vae = PosteriorMatchingVAE(3, 2, (4,), posterior="gaussian", decoder_scale="feature")
    W = torch.randn(3, 2)
    b = torch.randn(3)
    sigma = 0.7
    vae.decoder = torch.nn.Linear(2, 3)
    with torch.no_grad():
        vae.decoder.weight.copy_(W)
        vae.decoder.bias.copy_(b)
        vae.likelihood.raw_scale.fill_(0.0)
        vae.likelihood.min_scale = 0.0
        # softplus(log(e - 1)) = 1; set raw scale so that scale == sigma
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(sigma)) - math.log(math.e - 1))
    scale = vae.likelihood.parameters_from(torch.zeros(1, 3))[1]
    torch.testing.assert_close(scale, torch.full((3,), sigma))
    x = torch.randn(5, 3)
    mask = torch.ones(5, 3, dtype=torch.bool)
    precision = torch.eye(2) + W.T @ W / sigma**2
    covariance = torch.linalg.inv(precision)
    loc = (covariance @ W.T @ ((x - b).T / sigma**2)).T
    from afa.posteriors import FullCovarianceGaussian

    proposal = FullCovarianceGaussian(
        loc, scale_tril=torch.linalg.cholesky(covariance).expand(5, 2, 2)
    )
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(3))
    with torch.no_grad():
        estimate = vae.log_marginal(x, mask, proposal, torch.randn(8, 1, 2))
    torch.testing.assert_close(estimate, marginal.log_prob(x), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("posterior", ["gaussian", "autoregressive"])
def test_decoder_means_and_sample_completions_shapes(posterior):
    vae = _vae(posterior).eval()
    x, mask = _batch()
    noise_dim = 4 if posterior == "autoregressive" else 2
    with torch.no_grad():
        means = vae.decoder_means(x, mask, torch.randn(5, 1, noise_dim))
        draws = vae.sample_completions(x, mask, torch.randn(5, 1, noise_dim), torch.randn(5, 1, 4))
    assert means.shape == (5, 6, 4)
    assert draws.shape == (5, 6, 4)
    assert torch.isfinite(means).all() and torch.isfinite(draws).all()


def test_bernoulli_vae_means_in_unit_interval():
    vae = _vae(likelihood="bernoulli").eval()
    x = (torch.rand(6, 4) < 0.5).float()
    mask = torch.rand(6, 4) < 0.5
    with torch.no_grad():
        means = vae.decoder_means(x, mask, torch.randn(5, 1, 2))
        draws = vae.sample_completions(x, mask, torch.randn(5, 1, 2), torch.randn(5, 1, 4))
    assert ((means[:, ~mask] > 0) & (means[:, ~mask] < 1)).all()
    assert torch.equal(means[:, mask], x[mask].expand(5, -1))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("decoder_scale", ["heteroscedastic", "correlated"])
def test_loss_gradients_finite_when_masked_out_entries_hold_nan(decoder_scale):
    vae = _vae(decoder_scale=decoder_scale)
    x, mask = _batch()
    x = torch.where(mask, x, torch.full_like(x, float("nan")))
    loss, _ = vae.loss(x, mask, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    for p in vae.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
