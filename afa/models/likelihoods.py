"""Factorised decoder likelihoods ``p(x_j | z)``: Gaussian with learned scale, and Bernoulli."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "make_likelihood"]


class GaussianLikelihood(nn.Module):
    """``N(x_j; μ_j(z), σ_j)`` with a learned scale per feature (or one shared scale).

    Parameters
    ----------
    n_features : int
    shared_scale : bool, default=False
        One scale for every feature instead of one per feature.
    min_scale : float, default=1e-3
        Floor on the scale, in the decoder's (standardised) units.
    """

    def __init__(self, n_features: int, shared_scale: bool = False, min_scale: float = 1e-3):
        super().__init__()
        self.raw_scale = nn.Parameter(torch.zeros(1 if shared_scale else n_features))
        self.min_scale = min_scale

    @property
    def scale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_scale + math.log(math.e - 1)) + self.min_scale

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """Element-wise log-density of ``x`` under the decoder output (same shape)."""
        scale = self.scale
        return (
            -0.5 * ((x - decoder_output) / scale).square()
            - torch.log(scale)
            - 0.5 * math.log(2 * math.pi)
        )

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``E[x | z]``."""
        return decoder_output

    def sample(self, decoder_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw from ``p(x | z)`` given standard-normal ``noise`` broadcastable to the output."""
        return decoder_output + self.scale * noise


class BernoulliLikelihood(nn.Module):
    """``Bernoulli(x_j; sigmoid(logit_j(z)))`` for binary data or data in [0, 1]."""

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


def make_likelihood(name: str, n_features: int) -> nn.Module:
    """Return the likelihood module called ``name`` ("gaussian" or "bernoulli")."""
    if name == "gaussian":
        return GaussianLikelihood(n_features)
    if name == "bernoulli":
        return BernoulliLikelihood(n_features)
    raise ValueError(f"Unknown likelihood {name!r}; choose 'gaussian' or 'bernoulli'.")
