"""Decoder likelihoods ``p(x | z)``.

Every likelihood answers the three queries the VAE asks, for any mask of observed entries:

- ``log_prob(x, decoder_output, mask)``: ``log p(x_o | z)`` summed over the masked entries;
- ``conditional_mean(x, decoder_output, mask)``: ``E[x | x_o, z]`` (observed entries kept);
- ``conditional_sample(x, decoder_output, mask, noise)``: a draw of ``x_u`` given ``x_o, z``.

The factorised likelihoods (Gaussian with a learned scale, Bernoulli) ignore ``x_o`` beyond
``z``; :class:`CorrelatedGaussianLikelihood` couples the features through a learned
correlation matrix, so the observed entries also move the unobserved ones directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from afa._torch import embed_block

__all__ = [
    "BernoulliLikelihood",
    "CorrelatedGaussianLikelihood",
    "GaussianLikelihood",
    "make_likelihood",
]

_LOG_2PI = math.log(2 * math.pi)
_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(raw + this) is 1 at raw = 0


def _positive(raw: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``softplus`` shifted to equal 1 (plus ``floor``) at ``raw = 0``."""
    return nn.functional.softplus(raw + _SOFTPLUS_ONE) + floor


class _FactorisedLikelihood(nn.Module):
    """Mask handling shared by likelihoods that factorise over features given ``z``."""

    n_outputs_per_feature: int = 1

    def n_outputs(self, n_features: int) -> int:
        """Decoder outputs needed for ``n_features`` features."""
        return n_features * self.n_outputs_per_feature

    def log_prob(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``Σ_{j: mask_j} log p(x_j | z)``, broadcasting over leading sample dimensions."""
        element = self.element_log_prob(x, decoder_output)
        return torch.where(mask, element, torch.zeros_like(element)).sum(-1)

    def conditional_mean(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``E[x | z]`` with the masked entries replaced by ``x``."""
        return torch.where(mask, x, self.mean(decoder_output))

    def conditional_sample(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """A draw from ``p(x | z)`` with the masked entries replaced by ``x``."""
        return torch.where(mask, x, self.sample(decoder_output, noise))

    def mean_conditional_covariance(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``mean_k Cov[x | x_o, z_k]`` over the leading draws ``k``: shape ``(n, d, d)``.

        Diagonal (the features are independent given ``z``), zero for observed entries.
        ``decoder_output`` has shape ``(K, n, ·)``.
        """
        variance = self.variance(decoder_output).mean(0)
        return torch.diag_embed(torch.where(mask, torch.zeros_like(variance), variance))


class GaussianLikelihood(_FactorisedLikelihood):
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
                f"Unknown scale {scale!r}; choose 'feature', 'shared', 'heteroscedastic' "
                "or (through make_likelihood) 'correlated'."
            )
        self.n_features = n_features
        self.n_outputs_per_feature = 2 if scale == "heteroscedastic" else 1
        width = 0 if scale == "heteroscedastic" else 1 if scale == "shared" else n_features
        self.raw_scale = nn.Parameter(torch.zeros(width))
        self.min_scale = min_scale

    def parameters_from(self, decoder_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, scale)`` of ``p(x | z)`` for a decoder output."""
        heteroscedastic = self.raw_scale.numel() == 0
        # a heteroscedastic output is [means, raw scales] for however many features it has
        width = decoder_output.shape[-1] // 2 if heteroscedastic else self.n_features
        mean = decoder_output[..., :width]
        raw = decoder_output[..., width:] if heteroscedastic else self.raw_scale
        return mean, _positive(raw, self.min_scale)

    def element_log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """Element-wise log-density of ``x`` (shape ``(..., d)``) under the decoder output."""
        mean, scale = self.parameters_from(decoder_output)
        return -0.5 * ((x - mean) / scale).square() - torch.log(scale) - 0.5 * _LOG_2PI

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``E[x | z]``."""
        return self.parameters_from(decoder_output)[0]

    def variance(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder variance ``Var[x_j | z]``, the squared scale."""
        return (
            self.parameters_from(decoder_output)[1]
            .square()
            .expand(decoder_output.shape[:-1] + (self.n_features,))
        )

    def sample(self, decoder_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw from ``p(x | z)`` given standard-normal ``noise`` broadcastable to the mean."""
        mean, scale = self.parameters_from(decoder_output)
        return mean + scale * noise


class BernoulliLikelihood(_FactorisedLikelihood):
    """``Bernoulli(x_j; sigmoid(logit_j(z)))`` for binary data or data in [0, 1]."""

    def __init__(self, n_features: int) -> None:
        super().__init__()

    def element_log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """Element-wise ``x log p + (1 - x) log(1 - p)``; ``x`` may be fractional.

        Written as ``x·logit - softplus(logit)``, which broadcasts ``x`` without copying it.
        """
        return x * decoder_output - nn.functional.softplus(decoder_output)

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``sigmoid(logits)``."""
        return torch.sigmoid(decoder_output)

    def variance(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The Bernoulli variance ``p (1 - p)``."""
        mean = self.mean(decoder_output)
        return mean * (1 - mean)

    def sample(self, decoder_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A 0/1 draw, using ``Φ(noise)`` as the uniform."""
        return (torch.special.ndtr(noise) < self.mean(decoder_output)).to(decoder_output.dtype)


class CorrelatedGaussianLikelihood(nn.Module):
    """``N(x; μ(z), D(z) C D(z))``: per-feature scales from the decoder, one learned correlation.

    ``D(z)`` is the diagonal of per-feature scales the decoder outputs (as in the
    heteroscedastic :class:`GaussianLikelihood`) and ``C`` a correlation matrix shared by all
    ``z``, so the features stay correlated given ``z``: what the latent does not explain, a
    Gaussian conditional carries. ``C`` starts at the identity, where the model is the
    factorised one. Queries with a mask embed each row's observed block in a full matrix
    (``C_oo`` with the identity elsewhere), so a batch of rows with different masks is
    handled by one batched Cholesky factorisation.

    Parameters
    ----------
    n_features : int
    min_scale : float, default=1e-3
        Floor on the scales, in the decoder's (standardised) units.
    jitter : float, default=1e-3
        ``C`` is ``(1 - jitter) R + jitter I`` for a learned correlation ``R``: every
        conditional variance keeps at least this share.

    Examples
    --------
    >>> likelihood = CorrelatedGaussianLikelihood(3)
    >>> output = torch.zeros(2, 6)  # means 0, scales 1 (+ min_scale)
    >>> mask = torch.tensor([[True, True, True], [True, False, False]])
    >>> likelihood.log_prob(torch.zeros(2, 3), output, mask).detach().round(decimals=4)
    tensor([-2.7598, -0.9199])
    """

    no_weight_decay = ("raw_factor",)  # shrinking it would pull C towards the identity

    def __init__(self, n_features: int, min_scale: float = 1e-3, jitter: float = 1e-3) -> None:
        super().__init__()
        self.n_features = n_features
        self.min_scale = min_scale
        self.jitter = jitter
        self.raw_factor = nn.Parameter(torch.zeros(n_features, n_features))

    def n_outputs(self, n_features: int) -> int:
        """Decoder outputs needed: a mean and a scale per feature."""
        return 2 * n_features

    def correlation(self) -> torch.Tensor:
        """The correlation matrix ``C`` (unit diagonal, positive definite)."""
        lower = torch.tril(self.raw_factor, -1) + torch.diag_embed(
            _positive(self.raw_factor.diagonal())
        )
        rows = lower / lower.norm(dim=-1, keepdim=True)
        identity = torch.eye(self.n_features, dtype=rows.dtype, device=rows.device)
        return (1 - self.jitter) * rows @ rows.T + self.jitter * identity

    def parameters_from(self, decoder_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, scale)``: the decoder's means and per-feature scales."""
        d = self.n_features
        return decoder_output[..., :d], _positive(decoder_output[..., d:], self.min_scale)

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``E[x | z]``."""
        return decoder_output[..., : self.n_features]

    def _observed_precision(
        self, correlation: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, in float64: ``C_oo^-1`` embedded (identity elsewhere) and ``log det C_oo``."""
        factor = torch.linalg.cholesky(embed_block(correlation.double(), mask))
        log_det = 2.0 * torch.log(factor.diagonal(dim1=-2, dim2=-1)).sum(-1)
        return torch.cholesky_inverse(factor), log_det

    def log_prob(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``log N(x_o; μ_o, D_o C_oo D_o)`` per row, with ``o`` the entries in ``mask``.

        ``mask`` has shape ``(n, d)``; ``x`` and ``decoder_output`` may carry leading sample
        dimensions.
        """
        mean, scale = self.parameters_from(decoder_output)
        observed = mask.to(mean.dtype)
        whitened = torch.where(mask, (x - mean) / scale, torch.zeros_like(mean))
        correlation = self.correlation()
        if bool(mask.all()):  # the common training case: one factorisation for every row
            factor = torch.linalg.cholesky(correlation)
            identity = torch.eye(self.n_features, dtype=mean.dtype, device=mean.device)
            inverse_factor = torch.linalg.solve_triangular(factor, identity, upper=False)
            quadratic = (whitened @ inverse_factor.T).square().sum(-1)
            log_det = 2.0 * torch.log(factor.diagonal()).sum()
        else:
            precision, log_det = (
                t.to(mean.dtype) for t in self._observed_precision(correlation, mask)
            )
            quadratic = torch.einsum("nij,...nj->...ni", precision, whitened) * whitened
            quadratic = quadratic.sum(-1)
        log_scale = (torch.log(scale) * observed).sum(-1)
        return -0.5 * (quadratic + log_det + observed.sum(-1) * _LOG_2PI) - log_scale

    def _regression(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E[x | x_o, z]`` (observed entries kept), the scales, ``C`` and ``C_oo^-1``.

        The regression runs in float64: it can cancel large terms, and a row's result must
        not depend on which rows share its batch.
        """
        mean, scale = self.parameters_from(decoder_output)
        whitened = torch.where(mask, (x - mean) / scale, torch.zeros_like(mean))
        correlation = self.correlation().double()
        precision = self._observed_precision(correlation, mask)[0]
        regressed = torch.einsum("nij,...nj->...ni", precision, whitened.double()) @ correlation
        centre = torch.where(mask, x, mean + scale * regressed.to(mean.dtype))
        return centre, scale, correlation, precision

    def conditional_mean(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``E[x | x_o, z] = μ + D C_·o C_oo^-1 D_o^-1 (x_o - μ_o)``; observed entries kept."""
        return self._regression(x, decoder_output, mask)[0]

    def mean_conditional_covariance(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``mean_k Cov[x | x_o, z_k] = E_k[s sᵀ] ⊙ (C_uu - C_uo C_oo^-1 C_ou)``: ``(n, d, d)``.

        Zero in the rows and columns of observed entries; ``decoder_output`` has shape
        ``(K, n, ·)``.
        """
        _, scale = self.parameters_from(decoder_output)
        correlation = self.correlation().double()
        precision = embed_block(self._observed_precision(correlation, mask)[0], mask, fill=0.0)
        residual = embed_block(correlation - correlation @ precision @ correlation, ~mask, 0.0)
        second_moment = torch.einsum("kni,knj->nij", scale, scale) / scale.shape[0]
        return second_moment * residual.to(scale.dtype)

    def conditional_sample(
        self, x: torch.Tensor, decoder_output: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """A draw of ``x_u`` from ``p(x_u | x_o, z)``; observed entries kept.

        ``noise`` is standard normal, broadcastable to ``(..., n, d)``.
        """
        centre, scale, correlation, precision = self._regression(x, decoder_output, mask)
        precision = embed_block(precision, mask, fill=0.0)
        # C_uu given o; C carries the jitter, so this is at least jitter * I: no more is added
        residual = correlation - correlation @ precision @ correlation
        factor = torch.linalg.cholesky(embed_block(residual, ~mask)).to(centre.dtype)
        correlated = torch.einsum("nij,...nj->...ni", factor, noise.expand(centre.shape))
        return torch.where(mask, x, centre + scale * correlated)


def make_likelihood(name: str, n_features: int, scale: str | None = "heteroscedastic") -> nn.Module:
    """Return the likelihood called ``name`` ("gaussian" or "bernoulli").

    ``scale`` is the Gaussian's scale model: ``"correlated"`` gives
    :class:`CorrelatedGaussianLikelihood`, the others :class:`GaussianLikelihood`; the
    Bernoulli ignores it.
    """
    if name == "gaussian" and scale == "correlated":
        return CorrelatedGaussianLikelihood(n_features)
    if name == "gaussian":
        return GaussianLikelihood(n_features, scale=scale)
    if name == "bernoulli":
        return BernoulliLikelihood(n_features)
    raise ValueError(f"Unknown likelihood {name!r}; choose 'gaussian' or 'bernoulli'.")
