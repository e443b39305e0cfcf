"""Tabular VAE with a partial posterior trained by Posterior Matching."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution

from afa.masks import TRAINING_MASKS, bernoulli_mask, uniform_mask
from afa.models.likelihoods import make_likelihood
from afa.nn import ResidualMLP
from afa.posteriors import FullCovarianceGaussian, GaussianPosterior, make_partial_posterior

__all__ = ["PosteriorMatchingVAE"]


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * math.log(2 * math.pi))


def _kl_to_standard_normal(q: FullCovarianceGaussian) -> torch.Tensor:
    tril = q.scale_tril
    log_det = 2 * torch.log(tril.diagonal(dim1=-2, dim2=-1)).sum(-1)
    trace = tril.square().sum((-2, -1))
    return 0.5 * (trace + q.loc.square().sum(-1) - q.loc.shape[-1] - log_det)


def _log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


class PosteriorMatchingVAE(nn.Module):
    """A VAE ``p(z) p(x|z)`` with encoder ``q(z|x)`` and a partial posterior ``q(z|x_o)``.

    The encoder is a full-covariance Gaussian reading ``(x * m, m)``, where ``m`` marks the
    entries present in the data; the decoder is a residual MLP with a factorised likelihood.
    The training loss is ``-ELBO + pm_weight * (-log q(z | x_o))`` at one encoder sample
    ``z``, with ``x_o`` the data's observed entries further hidden by a random training mask.

    Parameters
    ----------
    n_features : int
        Row width ``d``.
    latent_dim : int
        Latent dimension ``L``.
    hidden_layer_sizes : sequence of int
        Widths of the residual blocks of every network.
    posterior : str, default="autoregressive"
        Partial-posterior family (see :func:`afa.posteriors.make_partial_posterior`).
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
    dropout : float, default=0.0
    pm_weight : float, default=1.0
        Weight of the Posterior Matching term.
    stop_gradient : bool, default=True
        Detach the encoder sample in the PM term, so PM trains only ``q(z|x_o)``.
    training_mask : {"bernoulli", "uniform"}, default="bernoulli"
    observed_fraction : tuple of float, default=(0.0, 1.0)
        The range of the share of entries observed in ``"uniform"`` training masks
        (:func:`afa.masks.uniform_mask`).
    decoder_scale : {"heteroscedastic", "correlated", "feature", "shared"}, \
default="heteroscedastic"
        Scale of a Gaussian decoder: output by the decoder per feature and per ``z``; the
        same plus a learned correlation between features; one learned scale per feature;
        or one for all features.

    Examples
    --------
    >>> vae = PosteriorMatchingVAE(4, 2, (8,), posterior="gaussian")
    >>> x, mask = torch.randn(5, 4), torch.ones(5, 4, dtype=torch.bool)
    >>> loss, terms = vae.loss(x, mask, torch.Generator().manual_seed(0))
    >>> sorted(terms)
    ['elbo', 'kl', 'pm']
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        hidden_layer_sizes: Sequence[int],
        posterior: str = "autoregressive",
        likelihood: str = "gaussian",
        dropout: float = 0.0,
        pm_weight: float = 1.0,
        stop_gradient: bool = True,
        training_mask: str = "bernoulli",
        decoder_scale: str | None = "heteroscedastic",
        observed_fraction: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if training_mask not in TRAINING_MASKS:
            raise ValueError(
                f"Unknown training_mask {training_mask!r}; choose one of {sorted(TRAINING_MASKS)}."
            )
        self.latent_dim = latent_dim
        self.pm_weight = pm_weight
        self.stop_gradient = stop_gradient
        self.training_mask = training_mask
        self.observed_fraction = observed_fraction
        self.encoder = GaussianPosterior(n_features, latent_dim, hidden_layer_sizes, dropout)
        self.likelihood = make_likelihood(likelihood, n_features, decoder_scale)
        self.decoder = ResidualMLP(
            latent_dim,
            self.likelihood.n_outputs(n_features),
            hidden_layer_sizes,
            dropout,
        )
        self.partial_posterior = make_partial_posterior(
            posterior, n_features, latent_dim, hidden_layer_sizes, dropout
        )

    # ------------------------------------------------------------------ training
    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        kl_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean training loss over the batch, and its terms (per row, as floats).

        ``mask`` marks the entries present in the data; the ELBO counts only those. Entries
        outside ``mask`` are ignored, even NaN.
        """
        x = torch.where(mask, x, torch.zeros_like(x))
        encoder = self.encoder(x, mask)
        noise = torch.randn(x.shape[0], self.latent_dim, generator=generator, device=x.device)
        z = encoder.from_noise(noise)
        reconstruction = self.decoder_log_prob(x, mask, z)
        kl = _kl_to_standard_normal(encoder)
        elbo = reconstruction - kl_weight * kl
        matching = self._matching_loss(x, mask, z, generator)
        loss = (-elbo + self.pm_weight * matching).mean()
        terms = {
            "elbo": float((reconstruction - kl).detach().mean()),
            "kl": float(kl.detach().mean()),
            "pm": float(matching.detach().mean()),
        }
        return loss, terms

    def _matching_loss(
        self, x: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """``-log q(z | x_o)`` per row under a fresh training mask; zeros when ``pm_weight`` is
        0 (a plain VAE, whose partial posterior then stays untrained)."""
        if self.pm_weight == 0:
            return torch.zeros_like(z[:, 0])
        partial_mask = mask & self._training_mask(tuple(x.shape), generator, x.device)
        target = z.detach() if self.stop_gradient else z
        return -self.partial_posterior(x, partial_mask).log_prob(target)

    def _training_mask(
        self, shape: tuple[int, int], generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """A fresh training mask: True where an entry counts as observed for ``q(z | x_o)``."""
        if self.training_mask == "uniform":
            return uniform_mask(shape, generator, device, self.observed_fraction)
        return bernoulli_mask(shape, generator, device)

    # ------------------------------------------------------------------ densities
    def decoder_log_prob(
        self, x: torch.Tensor, mask: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``log p(x_mask | z)``, broadcasting over leading sample dimensions of ``z``."""
        return self.likelihood.log_prob(x, self.decoder(z), mask)

    def log_marginal(
        self, x: torch.Tensor, mask: torch.Tensor, proposal: Distribution, noise: torch.Tensor
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x_mask)`` with latents drawn from ``proposal``.

        ``noise`` has shape ``(K, 1, proposal.noise_dim)``; returns shape ``(n,)``.
        """
        z, proposal_log_prob = proposal.sample_with_log_prob(noise)
        weights = self.decoder_log_prob(x, mask, z) + _standard_normal_log_prob(z)
        return _log_mean_exp(weights - proposal_log_prob)

    def log_conditional(
        self,
        x: torch.Tensor,
        target_mask: torch.Tensor,
        observed_mask: torch.Tensor,
        encoder_noise: torch.Tensor,
        posterior_noise: torch.Tensor,
    ) -> torch.Tensor:
        """``log p(x_t | x_o) = log p(x_t) - log p(x_o)`` for ``o ⊆ t`` (both masks per row).

        ``log p(x_t)`` uses the encoder as proposal and ``log p(x_o)`` the partial posterior.
        Rows with ``t == o`` get exactly 0; rows with nothing observed use ``log p(x_∅) = 0``.
        """
        joint = self.log_marginal(x, target_mask, self.encoder(x, target_mask), encoder_noise)
        evidence = self.log_marginal(
            x, observed_mask, self.partial_posterior(x, observed_mask), posterior_noise
        )
        evidence = torch.where(observed_mask.any(-1), evidence, torch.zeros_like(evidence))
        scored = (target_mask & ~observed_mask).any(-1)
        return torch.where(scored, joint - evidence, torch.zeros_like(joint))

    # ------------------------------------------------------------------ imputation
    def decoder_means(
        self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """``E[x | x_o, z]`` at ``z ~ q(z | x_o)``: shape ``(K, n, d)`` for noise ``(K, 1, ·)``.

        Observed entries are kept; for a factorised likelihood the others are decoder means.
        """
        z = self.partial_posterior(x, mask).from_noise(noise)
        return self.likelihood.conditional_mean(x, self.decoder(z), mask)

    def sample_completions(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        latent_noise: torch.Tensor,
        value_noise: torch.Tensor,
    ) -> torch.Tensor:
        """Draws from ``p(x | z)`` at ``z ~ q(z | x_o)``: shape ``(K, n, d)``."""
        z = self.partial_posterior(x, mask).from_noise(latent_noise)
        return self.likelihood.conditional_sample(x, self.decoder(z), mask, value_noise)
