"""Conditional prior networks and reference samplers (afa.conditional, ConditionalPriorImputer)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from conftest import make_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from torch import nn

from afa import ConditionalPriorImputer, PosteriorMatchingImputer
from afa.conditional import (
    FAMILIES,
    AffineFamily,
    Evidence,
    MLPFamily,
    PlanarFamily,
    conditional_elbo,
    fit_conditional_prior,
    grid_log_posterior,
    hmc_sample,
    minimize_adam,
    minimize_lbfgs,
    quasi_random_noise,
    rejection_sample,
    starting_means,
    whitened_noise,
)
from afa.models.likelihoods import BernoulliLikelihood, GaussianLikelihood


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _frozen(*modules: nn.Module) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def linear_gaussian():
    """A linear-Gaussian VAE x = W z + b + σ ε: p(z | x_o) is Gaussian in closed form."""
    generator = torch.Generator().manual_seed(0)
    latent_dim, n_features, n_queries = 3, 8, 6
    decoder = nn.Linear(latent_dim, n_features)
    with torch.no_grad():
        decoder.weight.copy_(torch.randn(n_features, latent_dim, generator=generator))
        decoder.bias.copy_(torch.randn(n_features, generator=generator))
    likelihood = GaussianLikelihood(n_features, scale="shared")
    with torch.no_grad():
        likelihood.raw_scale.fill_(-1.0)
    _frozen(decoder, likelihood)
    sigma = float(likelihood.parameters_from(torch.zeros(n_features))[1][0])
    x = 2 * torch.randn(n_queries, n_features, generator=generator)
    mask = torch.rand(n_queries, n_features, generator=generator) < 0.6
    mask[0] = False  # no evidence: the posterior is the prior
    evidence = Evidence(decoder, likelihood, x, mask)
    means, covariances, log_evidence = [], [], []
    for q in range(n_queries):
        W, b = decoder.weight[mask[q]], decoder.bias[mask[q]]
        covariance = torch.linalg.inv(torch.eye(latent_dim) + W.T @ W / sigma**2)
        means.append(covariance @ W.T @ (x[q, mask[q]] - b) / sigma**2)
        covariances.append(covariance)
        marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(len(b)))
        log_evidence.append(marginal.log_prob(x[q, mask[q]]) if len(b) else torch.tensor(0.0))
    return evidence, torch.stack(means), torch.stack(covariances), torch.stack(log_evidence)


def _fit(family, evidence, n_noise=512, seed=0, **options):
    noise = whitened_noise(n_noise, family.latent_dim, torch.Generator().manual_seed(seed))
    held_out = whitened_noise(n_noise, family.latent_dim, torch.Generator().manual_seed(seed + 1))
    return fit_conditional_prior(
        family, evidence, noise, torch.Generator().manual_seed(seed), held_out, **options
    )


@pytest.fixture(scope="module")
def toy_2d():
    """A small nonlinear decoder with a 2-D latent and a Bernoulli likelihood."""
    torch.manual_seed(1)
    decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 6))
    with torch.no_grad():
        decoder[2].weight.mul_(3.0)
    likelihood = BernoulliLikelihood(6)
    _frozen(decoder, likelihood)
    x = torch.tensor([[1.0, 0, 1, 1, 0, 1], [0.0, 0, 1, 0, 1, 1], [1.0, 1, 1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1]]).bool()
    evidence = Evidence(decoder, likelihood, x, mask)
    points, log_mass, log_evidence = grid_log_posterior(evidence, limit=6.0, resolution=301)
    mass = log_mass.exp()
    mean = mass.T @ points
    second = torch.einsum("gq,gi,gj->qij", mass, points, points)
    covariance = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    return evidence, mean, covariance, log_evidence


def _moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = draws.mean(0)
    centred = draws - mean
    return mean, torch.einsum("nqi,nqj->qij", centred, centred) / (draws.shape[0] - 1)


# ---------------------------------------------------------------------------------- families
def test_gvi_recovers_the_exact_linear_gaussian_posterior(linear_gaussian):
    evidence, mean, covariance, log_evidence = linear_gaussian
    family = AffineFamily(3)
    result = _fit(family, evidence, tol=1e-9)
    loc, tril, _ = family._split(result.params)
    torch.testing.assert_close(loc, mean, atol=2e-3, rtol=0)
    torch.testing.assert_close(tril @ tril.transpose(-1, -2), covariance, atol=2e-3, rtol=0)
    # with whitened noise the fitted C-ELBO of an exact family is log p(x_o) itself
    torch.testing.assert_close(-result.loss, log_evidence, atol=2e-3, rtol=1e-5)
    assert bool(result.converged.all())


def test_planar_is_not_worse_than_gvi_on_the_linear_gaussian(linear_gaussian):
    evidence, mean, covariance, log_evidence = linear_gaussian
    fresh = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(9))
    values = {}
    for name in ("gvi", "planar"):
        family = FAMILIES[name](3, 8)
        params = _fit(family, evidence).params
        values[name] = conditional_elbo(family, params, fresh, evidence)
        z, _ = family.transform(params, fresh)
        z_mean, z_covariance = _moments(z)
        torch.testing.assert_close(z_mean, mean, atol=0.05, rtol=0)
        torch.testing.assert_close(z_covariance, covariance, atol=0.05, rtol=0)
    assert bool((values["planar"] >= values["gvi"] - 0.01).all())
    assert bool((values["planar"] <= log_evidence + 0.01).all())  # a lower bound


def test_planar_layers_stay_invertible_with_exact_log_determinants():
    family = PlanarFamily(3, 4)
    generator = torch.Generator().manual_seed(0)
    params = family.initial(2, generator) + 3 * torch.randn(
        2, family.n_parameters, generator=generator
    )
    noise = torch.randn(6, 3, generator=generator)
    z, log_det = family.transform(params, noise)
    assert torch.isfinite(log_det).all()
    for q in range(2):
        for n in range(6):
            jacobian = torch.autograd.functional.jacobian(
                lambda e, q=q: family.transform(params, e.unsqueeze(0))[0][0, q], noise[n]
            )
            sign, log_abs = torch.linalg.slogdet(jacobian)
            assert sign > 0  # orientation preserved: the constraint w'û > -1 holds
            torch.testing.assert_close(log_abs, log_det[n, q], atol=1e-4, rtol=1e-4)
    # each layer is strictly monotone along w, hence injective: distinct inputs stay distinct
    points = torch.linspace(-20, 20, 2001).unsqueeze(-1) * torch.ones(1, 3)
    mapped = family.transform(params, points)[0][:, 0]
    assert (mapped.diff(dim=0).norm(dim=-1) > 0).all()


def test_planar_log_determinant_stays_exact_where_a_layer_nearly_folds():
    """With wᵀu far below 0 a layer's slope nears 0 along w: the log-determinant must
    follow it (it was once floored at -13.8 per layer, with no gradient)."""
    family = PlanarFamily(2, 1)
    params = family.initial(1, torch.Generator().manual_seed(0)).double()
    w = params[0, -3:-1]
    noise = torch.zeros(1, 2, dtype=torch.float64)  # with b = 0 the layer's tanh is 0 here
    for wu in (-15.0, -30.0):
        params[0, -5:-3] = wu * w / w.square().sum()  # u along w, so that wᵀu = wu
        log_det = family.transform(params, noise)[1][0, 0]
        # the slope along w is 1 + wᵀû = softplus(wᵀu)
        exact = torch.log(torch.nn.functional.softplus(torch.tensor(wu, dtype=torch.float64)))
        torch.testing.assert_close(log_det, exact, rtol=1e-12, atol=0)
    params[0, -5:-3] = -15.0 * w / w.square().sum()
    jacobian = torch.autograd.functional.jacobian(
        lambda e: family.transform(params, e.unsqueeze(0))[0][0, 0], noise[0]
    )  # at -30 this reference itself loses digits to 1 - (1 - 1e-13)
    log_det = family.transform(params, noise)[1][0, 0]
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jacobian)[1], rtol=1e-7, atol=0)


def test_mlp_family_log_determinant_matches_autograd_and_refuses_large_latents():
    family = MLPFamily(2, n_hidden=5)
    generator = torch.Generator().manual_seed(0)
    params = family.initial(1, generator) + 0.5 * torch.randn(
        1, family.n_parameters, generator=generator
    )
    noise = torch.randn(4, 2, generator=generator)
    _, log_det = family.transform(params, noise)
    for n in range(4):
        jacobian = torch.autograd.functional.jacobian(
            lambda e: family.transform(params, e.unsqueeze(0))[0][0, 0], noise[n]
        )
        torch.testing.assert_close(
            torch.linalg.slogdet(jacobian)[1], log_det[n, 0], atol=1e-4, rtol=1e-4
        )
    with pytest.raises(ValueError, match="at most 16"):
        MLPFamily(17)


def test_whitened_noise_has_exact_moments_and_needs_more_draws_than_dimensions():
    noise = whitened_noise(50, 4, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(
        noise.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        noise.T @ noise / 50, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="n_noise must exceed"):
        whitened_noise(4, 4, torch.Generator())


def test_quasi_random_noise_takes_numpy_seeds_and_refuses_no_draws():
    from afa.conditional import quasi_random_noise

    torch.testing.assert_close(quasi_random_noise(8, 3, np.int64(5)), quasi_random_noise(8, 3, 5))
    assert not torch.equal(quasi_random_noise(8, 3, 5), quasi_random_noise(8, 3, 6))
    with pytest.raises(ValueError, match="n_draws must be at least 1"):
        quasi_random_noise(0, 3, 5)


@pytest.mark.parametrize("latent_dim", [2, 32])
def test_quasi_random_noise_is_standard_normal_and_more_even_than_independent_draws(latent_dim):
    draws = quasi_random_noise(1024, latent_dim, seed=3).double()
    assert draws.shape == (1024, latent_dim) and bool(torch.isfinite(draws).all())
    # every coordinate is N(0, 1): its sorted CDF values sit on the uniform quantiles, within
    # 1e-3 (the Kolmogorov-Smirnov distance of 1,024 independent draws is about 0.03)
    uniforms = torch.sort(torch.special.ndtr(draws), dim=0).values
    quantiles = (torch.arange(1024, dtype=torch.float64).unsqueeze(1) + 0.5) / 1024
    assert float((uniforms - quantiles).abs().max()) < 1e-3
    # so the sample mean is far inside the independent draws' standard error of 1/32
    assert float(draws.mean(0).abs().max()) < 5e-3
    torch.testing.assert_close(quasi_random_noise(1024, latent_dim, seed=3).double(), draws)
    assert not torch.equal(quasi_random_noise(1024, latent_dim, seed=4).double(), draws)


# ---------------------------------------------------------------------------------- optimisers
def _quadratics(n_queries: int):
    """Independent ill-conditioned quadratics, one per query, with known minima."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, 3, 4).expand(n_queries, -1) * torch.rand(
        n_queries, 1, generator=generator
    )
    centres = torch.randn(n_queries, 4, generator=generator)

    def objective(params, index):
        return 0.5 * (scales[index] * (params - centres[index]).square()).sum(-1)

    return objective, centres


def test_lbfgs_solves_each_query_and_stops_them_separately():
    objective, centres = _quadratics(5)
    result = minimize_lbfgs(objective, torch.zeros(5, 4), max_iter=200, tol=1e-9)
    torch.testing.assert_close(result.params, centres, atol=1e-3, rtol=0)
    assert bool(result.converged.all())
    assert len(set(result.n_iter.tolist())) > 1  # each query stops on its own


def test_lbfgs_result_of_a_query_does_not_depend_on_its_batch():
    objective, _ = _quadratics(5)
    together = minimize_lbfgs(objective, torch.zeros(5, 4), max_iter=200, tol=1e-9)
    alone = minimize_lbfgs(
        lambda p, i: objective(p, i + 2), torch.zeros(1, 4), max_iter=200, tol=1e-9
    )
    torch.testing.assert_close(alone.params[0], together.params[2])
    assert alone.n_iter[0] == together.n_iter[2]


def test_adam_reaches_the_minima():
    objective, centres = _quadratics(3)
    result = minimize_adam(objective, torch.zeros(3, 4), max_iter=3000, learning_rate=0.05)
    torch.testing.assert_close(result.params, centres, atol=2e-2, rtol=0)


def test_adam_does_not_call_a_query_stuck_at_an_undefined_region_converged():
    def objective(params, index):
        hole = torch.sqrt((params[:, 0] - 2.5) * (params[:, 0] - 1.0))  # NaN for 1 < p < 2.5
        return (params - 5).square().sum(-1) + 0.0 * hole

    result = minimize_adam(objective, torch.zeros(1, 2, dtype=torch.float64), max_iter=500)
    assert result.params[0, 0] < 1.0  # it cannot cross the hole
    assert not bool(result.converged[0])


def test_non_finite_losses_are_reported_not_hidden():
    def objective(params, index):
        return torch.where(index == 1, torch.nan, params.square().sum(-1))

    result = minimize_lbfgs(objective, torch.ones(2, 3), max_iter=20)
    assert torch.isfinite(result.loss[0]) and math.isinf(result.loss[1])
    assert bool(result.converged[0]) and not bool(result.converged[1])


# ---------------------------------------------------------------------------------- samplers
def test_samplers_agree_with_the_grid_posterior(toy_2d):
    evidence, mean, covariance, _ = toy_2d
    generator = torch.Generator().manual_seed(0)
    draws = {
        "rejection": rejection_sample(evidence, 4000, generator),
        "hmc": hmc_sample(evidence, 4000, generator, n_chains=64, n_burnin=200),
    }
    for name, z in draws.items():
        z_mean, z_covariance = _moments(z)
        torch.testing.assert_close(z_mean, mean, atol=0.08, rtol=0, msg=name)
        torch.testing.assert_close(z_covariance, covariance, atol=0.1, rtol=0.1, msg=name)


class _TwoBumps(nn.Module):
    """A Bernoulli logit whose evidence ``x = 1`` makes ``p(z | x_o)`` two sharp bumps: a local
    one at the origin with almost none of the mass, and the one holding it at ``(2.5, 2.5)``.
    """

    far = torch.tensor([2.5, 2.5])

    def __init__(self) -> None:
        super().__init__()
        self.identity = nn.Linear(2, 2)  # tells Evidence the latent size
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(2))
            self.identity.bias.zero_()
        _frozen(self.identity)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.identity(z)
        near = -z.square().sum(-1) / 0.2 + math.log(1e-6)
        far = -(z - self.far).square().sum(-1) / 0.2
        return (torch.logaddexp(near, far) - 30).unsqueeze(-1)  # logsigmoid(f - 30) ≈ f - 30


class _ShiftDecoder(nn.Module):
    """``x_0 ~ N(0, s²)`` whatever ``z`` and ``x_1 ~ N(z_1, s²)``, a heteroscedastic output."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = nn.Linear(2, 2, bias=False)  # gives Evidence its latent width
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.identity(z)
        mean = torch.stack([torch.zeros_like(z[..., 0]), z[..., 1]], -1)
        return torch.cat([mean, torch.full_like(mean, -1.0)], -1)


def test_rejection_stays_exact_for_a_posterior_far_from_the_prior():
    likelihood = GaussianLikelihood(2, scale="heteroscedastic")
    decoder = _ShiftDecoder()
    scale = likelihood.parameters_from(decoder(torch.zeros(1, 2)))[1][0, 1].item()
    evidence = Evidence(
        decoder, likelihood, torch.tensor([[0.0, 12.0]]), torch.tensor([[0, 1]]).bool()
    )
    draws = rejection_sample(evidence, 4000, torch.Generator().manual_seed(0))[:, 0, 1]
    exact_mean = 12.0 / (1 + scale**2)  # about 9.7: far outside the first [-6, 6] grid
    exact_std = math.sqrt(scale**2 / (1 + scale**2))
    assert draws.mean().item() == pytest.approx(exact_mean, abs=0.05)
    assert draws.std().item() == pytest.approx(exact_std, rel=0.05)


def test_pseudo_gibbs_runs_on_a_correlated_decoder(data):
    base = PosteriorMatchingImputer(
        decoder_scale="correlated", latent_dim=2, hidden_layer_sizes=(8,), max_iter=3
    ).fit(data)
    imputer = ConditionalPriorImputer(
        base=base, inference="pseudo_gibbs", n_burnin=5, n_samples=8, random_state=0
    ).fit(data)
    X, mask, X_nan = _queries(data)
    imputed = imputer.transform(X_nan)
    assert np.isfinite(imputed).all() and np.array_equal(imputed[mask], X[mask])


def test_fits_find_the_mode_holding_the_mass_not_the_one_nearest_the_origin():
    evidence = Evidence(
        _TwoBumps(), BernoulliLikelihood(1), torch.ones(1, 1), torch.ones(1, 1).bool()
    )
    points, log_mass, log_evidence = grid_log_posterior(evidence, limit=6.0, resolution=401)
    far_mass = log_mass.exp()[points.sum(-1) > 2.5].sum()  # beyond the midline
    assert float(far_mass) > 0.99
    fresh = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(5))
    for name in ("gvi", "planar"):
        family = FAMILIES[name](2, 4)
        params = _fit(family, evidence).params
        z = family.transform(params, fresh)[0]
        assert float((z.sum(-1) > 2.5).float().mean()) > 0.99, name
        gap = log_evidence - conditional_elbo(family, params, fresh, evidence)
        assert float(gap) < 0.05, name


class _NanBeyondTwo(_TwoBumps):
    """The same logit, NaN wherever ``z_1 > 2`` (which holds the far bump's peak)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logit = super().forward(z)
        return torch.where(z[..., :1] > 2, torch.nan, logit)


def test_starts_never_fall_where_the_evidence_is_nan():
    ones = torch.ones(2, 1)
    evidence = Evidence(_NanBeyondTwo(), BernoulliLikelihood(1), ones, ones.bool())
    starts = starting_means(evidence, torch.Generator().manual_seed(0))
    assert bool((starts[:, 0] <= 2).all())
    everywhere_nan = Evidence(
        _NanBeyondTwo(), BernoulliLikelihood(1), ones * torch.nan, ones.bool()
    )
    torch.testing.assert_close(
        starting_means(everywhere_nan, torch.Generator().manual_seed(0)), torch.zeros(2, 2)
    )


def test_variational_families_bound_the_grid_evidence(toy_2d):
    evidence, _, _, log_evidence = toy_2d
    fresh = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(3))
    for name in ("gvi", "planar"):
        family = FAMILIES[name](2, 8)
        params = _fit(family, evidence).params
        elbo = conditional_elbo(family, params, fresh, evidence)
        gap = log_evidence - elbo
        assert bool((gap > -0.01).all()), name  # a lower bound, up to Monte Carlo error
        assert bool((gap < 0.3).all()), name  # and a close one on this smooth posterior


def test_rejection_refuses_latents_above_two():
    evidence = Evidence(
        nn.Linear(3, 2), BernoulliLikelihood(2), torch.ones(1, 2), torch.ones(1, 2).bool()
    )
    with pytest.raises(ValueError, match="at most 2"):
        rejection_sample(evidence, 10, torch.Generator())


# ---------------------------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def data():
    return make_data(n=300, d=4, seed=5)


@pytest.fixture(scope="module")
def base(data):
    return PosteriorMatchingImputer(
        latent_dim=2, hidden_layer_sizes=(16,), max_iter=30, random_state=0
    ).fit(data)


def _imputer(base, **overrides):
    options = dict(base=base, n_noise=64, max_iter=100, n_samples=32, n_burnin=50, random_state=0)
    return ConditionalPriorImputer(**{**options, **overrides})


def _queries(data, seed=0, n=6):
    rng = np.random.default_rng(seed)
    X = data[:n].copy()
    mask = rng.random(X.shape) < 0.5
    mask[0] = True
    mask[1] = False
    return X, mask, np.where(mask, X, np.nan)


@pytest.mark.parametrize("inference", ["gvi", "planar", "fcn", "hmc", "rejection", "pseudo_gibbs"])
def test_every_method_keeps_observed_entries_and_is_finite(base, data, inference):
    X, mask, X_nan = _queries(data)
    imputer = _imputer(base, inference=inference).fit(data)
    filled = imputer.transform(X_nan)
    draws = imputer.sample(X_nan, n_samples=3)
    assert filled.shape == X.shape and draws.shape == (3, *X.shape)
    np.testing.assert_array_equal(filled[mask], X[mask])
    np.testing.assert_array_equal(draws[:, mask], np.broadcast_to(X[mask], (3, mask.sum())))
    assert np.isfinite(filled).all() and np.isfinite(draws).all()
    scores = imputer.score_conditional(X, mask)
    assert np.isfinite(scores).all() and scores[0] == 0.0
    elbo = imputer.conditional_elbo(X_nan)
    if inference in ("hmc", "rejection", "pseudo_gibbs"):
        assert np.isnan(elbo).all()
    else:
        assert np.isfinite(elbo).all() and elbo[1] == pytest.approx(0.0, abs=0.05)


def test_query_likelihood_matches_the_exact_grid_value(base, data):
    """score_conditional with exact (rejection) draws approaches log p(x_u | x_o) on a grid."""
    X, mask, _ = _queries(data, seed=2, n=4)
    imputer = _imputer(base, inference="rejection").fit(data)
    scores = imputer.score_conditional(X, mask, n_samples=3000)
    model = base._model()
    x, _ = base._tensors(X, np.ones_like(mask))
    observed = torch.as_tensor(mask)
    evidence = Evidence(model.decoder, model.likelihood, x, observed)
    with torch.no_grad():
        points, log_mass, _ = grid_log_posterior(evidence, limit=6.0, resolution=401)
        output = model.decoder(points.unsqueeze(1))
        unobserved = model.likelihood.log_prob(x, output, torch.ones_like(observed))
        unobserved = unobserved - model.likelihood.log_prob(x, output, observed)
        exact = torch.logsumexp(log_mass + unobserved, 0).double().numpy()
    exact -= (~mask * np.log(base.scale_)).sum(axis=1)
    np.testing.assert_allclose(scores, np.where(mask.all(1), 0.0, exact), atol=0.05)


@pytest.mark.parametrize(("inference", "tolerance"), [("gvi", 1e-4), ("planar", 2e-2)])
def test_a_query_gets_the_same_answer_alone_or_in_a_batch(base, data, inference, tolerance):
    """Per-query state makes the solves independent. Planar's objective is not convex, so
    rounding differences between batch shapes can end a query a few iterations apart: the
    answers then agree up to the optimiser's tolerance."""
    _, _, X_nan = _queries(data, seed=3)
    imputer = _imputer(base, inference=inference).fit(data)
    together = imputer.conditional_elbo(X_nan)
    alone = np.concatenate([imputer.conditional_elbo(X_nan[i : i + 1]) for i in (2, 3)])
    np.testing.assert_allclose(alone, together[2:4], atol=tolerance)
    np.testing.assert_allclose(
        imputer.transform(X_nan[3:4]), imputer.transform(X_nan)[3:4], atol=10 * tolerance
    )


class _Bend(nn.Module):
    """``(z1, z2) -> (z1, z2 + z1²)``: a decoder input that makes the posterior a banana."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([z[..., 0], z[..., 1] + z[..., 0] ** 2], -1)


@pytest.fixture(scope="module")
def banana():
    generator = torch.Generator().manual_seed(1)
    decoder = nn.Sequential(_Bend(), nn.Linear(2, 12))
    with torch.no_grad():
        decoder[1].weight.copy_(2 * torch.randn(12, 2, generator=generator))
        decoder[1].bias.zero_()
    likelihood = BernoulliLikelihood(12)
    _frozen(decoder, likelihood)
    x = (torch.rand(4, 12, generator=generator) < 0.5).float()
    mask = torch.rand(4, 12, generator=generator) < 0.7
    evidence = Evidence(decoder, likelihood, x, mask)
    return evidence, grid_log_posterior(evidence, limit=6.0, resolution=401)[2]


def test_planar_improves_on_gvi_where_the_posterior_is_not_gaussian(banana):
    evidence, log_evidence = banana
    fresh = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4))
    gap = {}
    for name in ("gvi", "planar"):
        family = FAMILIES[name](2, 16)
        params = _fit(family, evidence, n_noise=1024).params
        gap[name] = log_evidence - conditional_elbo(family, params, fresh, evidence)
    assert bool((gap["gvi"] > 0.03).all())  # a Gaussian cannot fit the banana
    assert bool((gap["planar"] < 0.75 * gap["gvi"]).all())
    assert bool((gap["planar"] > -0.01).all())


@pytest.mark.parametrize("inference", ["gvi", "planar"])
def test_few_draws_already_impute_as_many_draws_do(base, data, inference):
    """The draws averaged by transform are quasi-random: 32 give nearly the 4,096-draw answer
    (independent draws miss it by up to 0.3 feature standard deviations here)."""
    _, _, X_nan = _queries(data)
    few = _imputer(base, inference=inference, n_samples=32).fit(data).transform(X_nan)
    many = _imputer(base, inference=inference, n_samples=4096).fit(data).transform(X_nan)
    assert float(np.max(np.abs(few - many) / data.std(axis=0))) < 0.05


def test_own_base_is_a_plain_vae_and_a_given_base_stays_frozen(base, data):
    own = ConditionalPriorImputer(
        inference="gvi", latent_dim=2, hidden_layer_sizes=(8,), max_epochs=3, random_state=0
    ).fit(data)
    assert own.base_.pm_weight == 0.0 and own.base_.n_iter_ == 3
    before = {k: v.clone() for k, v in base.model_.state_dict().items()}
    reused = _imputer(base, inference="gvi").fit(data)
    assert reused.base_ is base
    reused.transform(_queries(data)[2])
    for key, value in base.model_.state_dict().items():
        torch.testing.assert_close(value, before[key])
    chained = _imputer(reused, inference="hmc").fit(data)
    assert chained.base_ is base


def test_unfitted_base_is_cloned_and_fitted(data):
    template = PosteriorMatchingImputer(
        latent_dim=2, hidden_layer_sizes=(8,), max_iter=2, random_state=0
    )
    imputer = ConditionalPriorImputer(base=template, inference="gvi", n_noise=16).fit(data)
    assert not hasattr(template, "model_") and hasattr(imputer.base_, "model_")


def test_pickled_imputer_gives_the_same_answers(base, data):
    _, _, X_nan = _queries(data)
    imputer = _imputer(base, inference="gvi").fit(data)
    restored = pickle.loads(pickle.dumps(imputer))
    np.testing.assert_allclose(restored.transform(X_nan), imputer.transform(X_nan))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(inference="magic"), ValueError, "inference must be one of"),
        (dict(optimizer="sgd"), ValueError, "optimizer must be one of"),
        (dict(n_layers=0), ValueError, "n_layers must be a positive integer"),
        (dict(tol=-1.0), ValueError, "tol must be a positive number"),
        (dict(base="vae"), TypeError, "base must be None"),
        (dict(max_epochs=-1), ValueError, "max_epochs must be a positive integer or 'auto'"),
        (dict(n_noise=2), ValueError, r"n_noise must exceed the VAE's latent dimension \(2\)"),
    ],
)
def test_bad_parameters_are_named(base, data, options, error, message):
    with pytest.raises(error, match=message):
        _imputer(base, **options).fit(data) if "base" not in options else ConditionalPriorImputer(
            **options
        ).fit(data)


def test_methods_needing_small_latents_say_so(data):
    wide = PosteriorMatchingImputer(
        latent_dim=3, hidden_layer_sizes=(8,), max_iter=2, random_state=0
    ).fit(data)
    with pytest.raises(ValueError, match="at most 2 dimensions"):
        ConditionalPriorImputer(base=wide, inference="rejection").fit(data)


def test_columns_must_match_the_base(base, data):
    with pytest.raises(ValueError, match="features"):
        _imputer(base).fit(data[:, :3])
    imputer = _imputer(base, inference="gvi").fit(data)
    with pytest.raises(ValueError, match="ConditionalPriorImputer is expecting 4 features"):
        imputer.transform(data[:2, :3])


def test_a_frozen_base_survives_clone(base, data):
    """Pipelines and searches clone their steps: FrozenEstimator keeps the VAE as fitted."""
    imputer = clone(_imputer(FrozenEstimator(base), inference="gvi")).fit(data)
    assert imputer.base_ is base
    _, _, X_nan = _queries(data)
    expected = _imputer(base, inference="gvi").fit(data).transform(X_nan)
    np.testing.assert_allclose(imputer.transform(X_nan), expected)


def test_parameters_changed_after_fit_are_checked_again(base, data):
    imputer = _imputer(base, inference="gvi").fit(data)
    imputer.set_params(inference="bogus")
    with pytest.raises(ValueError, match="inference must be one of"):
        imputer.transform(_queries(data)[2])


def test_sampled_imputations_are_independent_across_rows(base, data):
    imputer = _imputer(base, inference="gvi").fit(data)
    X = data[:60].copy()
    X[:, 3] = np.nan
    draws = imputer.sample(X, 100)[:, :, 3]
    correlation = np.corrcoef(draws.T)
    assert abs((correlation.sum() - 60) / (60 * 59)) < 0.05
    np.testing.assert_allclose(imputer.sample(X[5:7], 100)[:, 1, 3], draws[:, 6], atol=1e-5)


def test_sample_seeds_may_be_numpy_integers_or_random_states(base, data):
    imputer = _imputer(base, inference="gvi").fit(data)
    X_nan = _queries(data)[2]
    by_int = imputer.sample(X_nan, 3, random_state=7)
    np.testing.assert_array_equal(imputer.sample(X_nan, 3, random_state=np.int64(7)), by_int)
    assert np.isfinite(imputer.sample(X_nan, 3, random_state=2**64 - 2)).all()
    state = np.random.RandomState(0)
    first, second = (imputer.sample(X_nan, 3, random_state=state) for _ in range(2))
    assert not np.array_equal(first, second)  # the state advances, as numpy's would
    posteriors = imputer.condition(X_nan)
    assert posteriors.latents(4, random_state=np.int32(3)).shape == (4, 6, 2)
    with pytest.raises(ValueError, match="random_state must be None, an integer"):
        imputer.sample(X_nan, 3, random_state="seed")


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    X=hnp.arrays(np.float64, (3, 4), elements=st.floats(-100, 100, allow_nan=False)),
    mask=hnp.arrays(np.bool_, (3, 4)),
)
def test_observed_entries_never_change(base, X, mask):
    imputer = _imputer(base, inference="gvi", max_iter=30)
    imputer.fit(np.vstack([X, X + 1]))
    filled = imputer.transform(np.where(mask, X, np.nan))
    np.testing.assert_array_equal(filled[mask], X[mask])
    assert np.isfinite(filled).all()


def test_observed_head_matches_the_full_decoder():
    """The sparse-evidence fast path computes the same log p(x_o | z) as full decoding.

    Binary Bernoulli evidence takes the signed-logit path; fractional evidence does not.
    """
    from afa.nn import ResidualMLP

    torch.manual_seed(0)
    for likelihood, x, signed in [
        (BernoulliLikelihood(10), (torch.rand(5, 10) < 0.5).float(), True),
        (BernoulliLikelihood(10), torch.rand(5, 10), False),
        (GaussianLikelihood(10, scale="heteroscedastic"), torch.randn(5, 10), False),
    ]:
        decoder = ResidualMLP(3, likelihood.n_outputs(10), (8, 8))
        mask = torch.rand(5, 10) < 0.4
        mask[0] = False
        evidence = Evidence(decoder, likelihood, x, mask)
        assert evidence.observed_head is not None
        assert (evidence.observed_head.signed_padding is not None) is signed
        z = torch.randn(7, 5, 3)
        with torch.no_grad():
            expected = likelihood.log_prob(x, decoder(z), mask)
            torch.testing.assert_close(evidence.log_likelihood(z), expected)
            index = torch.tensor([3, 1])
            torch.testing.assert_close(
                evidence.subset(index).log_likelihood(z[:, index]), expected[:, index]
            )


def test_queries_split_into_chunks_get_the_same_answers(linear_gaussian, monkeypatch):
    import afa.conditional._families as families

    evidence = linear_gaussian[0]
    family = PlanarFamily(3, 4)
    whole = _fit(family, evidence, n_noise=64)
    monkeypatch.setattr(families, "_FIT_ELEMENTS_PER_CHUNK", 64 * 8 * 2)  # two queries each
    chunked = _fit(family, evidence, n_noise=64)
    torch.testing.assert_close(chunked.params, whole.params, atol=1e-3, rtol=0)


def test_own_base_trains_inside_no_grad(data):
    with torch.no_grad():
        imputer = ConditionalPriorImputer(
            inference="gvi", latent_dim=2, hidden_layer_sizes=(8,), max_epochs=2, random_state=0
        ).fit(data)
    assert imputer.n_iter_ == 2


@pytest.mark.parametrize("inference", ["planar", "hmc"])
def test_condition_fits_once_and_reports_each_row(base, data, inference):
    from afa import QueryPosteriors

    _, _, X_nan = _queries(data)
    imputer = _imputer(base, inference=inference).fit(data)
    posteriors = imputer.condition(X_nan)
    assert isinstance(posteriors, QueryPosteriors) and len(posteriors) == len(X_nan)
    assert posteriors.finite.all() and posteriors.converged.shape == (len(X_nan),)
    if inference == "planar":
        assert (posteriors.n_iter > 0).all()
    else:
        assert posteriors.converged.all() and (posteriors.n_iter == 0).all()
    draws = posteriors.latents(7)
    assert draws.shape == (7, len(X_nan), 2) and np.isfinite(draws).all()
    np.testing.assert_array_equal(posteriors.latents(7), draws)  # seeded: repeatable
    assert not np.array_equal(posteriors.latents(7, random_state=1), draws)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        posteriors.latents(0)
