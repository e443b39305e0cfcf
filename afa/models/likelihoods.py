"""Factorised decoder likelihoods ``p(x_j | z)``: Gaussian with learned scale, and Bernoulli."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "make_likelihood"]


class GaussianLikelihood(nn.Module):
    """``N(x_j; μ_j(z), σ_j)`` with a learned scale per feature, shared, or depending on z.

    Parameters
    ----------
    n_features : int
    scale : {"heteroscedastic", "feature", "shared"}, default="feature"
        One learned scale per feature, one for all features, or a scale per feature that the
        decoder outputs for each ``z`` (the decoder then has ``2 d`` outputs).
    min_scale : float, default=1e-3
        Floor on the scale, in the decoder's (standardised) units.
    """

    def __init__(self, n_features: int, scale: str = "feature", min_scale: float = 1e-3):
        super().__init__()
        if scale not in {"feature", "shared", "heteroscedastic"}:
            raise ValueError(
                f"Unknown scale {scale!r}; choose 'feature', 'shared' or 'heteroscedastic'."
            )
        self.n_features = n_features
        self.outputs_per_feature = 2 if scale == "heteroscedastic" else 1
        width = 0 if scale == "heteroscedastic" else 1 if scale == "shared" else n_features
        self.raw_scale = nn.Parameter(torch.zeros(width))
        self.min_scale = min_scale

    def parameters_from(self, decoder_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, scale)`` of ``p(x | z)`` for a decoder output."""
        mean = decoder_output[..., : self.n_features]
        heteroscedastic = self.raw_scale.numel() == 0
        raw = decoder_output[..., self.n_features :] if heteroscedastic else self.raw_scale
        return mean, nn.functional.softplus(raw + math.log(math.e - 1)) + self.min_scale

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """Element-wise log-density of ``x`` (shape ``(..., d)``) under the decoder output."""
        mean, scale = self.parameters_from(decoder_output)
        return (
            -0.5 * ((x - mean) / scale).square() - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        )

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``E[x | z]``."""
        return self.parameters_from(decoder_output)[0]

    def sample(self, decoder_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw from ``p(x | z)`` given standard-normal ``noise`` broadcastable to the mean."""
        mean, scale = self.parameters_from(decoder_output)
        return mean + scale * noise


class BernoulliLikelihood(nn.Module):
    """``Bernoulli(x_j; sigmoid(logit_j(z)))`` for binary data or data in [0, 1]."""

    outputs_per_feature = 1

    def __init__(self, n_features: int) -> None:
        super().__init__()

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """Element-wise ``x log p + (1 - x) log(1 - p)``; ``x`` may be fractional."""
        x, logits = torch.broadcast_tensors(x, decoder_output)
        return -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``sigmoid(logits)``."""
        return torch.sigmoid(decoder_output)

    def sample(self, decoder_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A 0/1 draw, using ``Φ(noise)`` as the uniform."""
        return (torch.special.ndtr(noise) < self.mean(decoder_output)).to(decoder_output.dtype)


def make_likelihood(name: str, n_features: int, scale: str = "heteroscedastic") -> nn.Module:
    """Return the likelihood called ``name`` ("gaussian" or "bernoulli").

    ``scale`` is the Gaussian's scale model (see :class:`GaussianLikelihood`).
    """
    if name == "gaussian":
        return GaussianLikelihood(n_features, scale=scale)
    if name == "bernoulli":
        return BernoulliLikelihood(n_features)
    raise ValueError(f"Unknown likelihood {name!r}; choose 'gaussian' or 'bernoulli'.")
