"""Distributions over the latent ``z`` given a (partially) observed row.

Every family is an ``nn.Module`` whose ``forward(x, mask)`` returns a
:class:`torch.distributions.Distribution` with batch shape ``(n,)`` and event shape ``(L,)``.
On top of ``log_prob``/``sample`` each distribution offers two methods afa relies on:

- ``from_noise(noise)`` maps standard-normal noise of shape ``(..., n or 1, noise_dim)`` to
  latents, so estimators can share one noise tensor across rows (common random numbers);
- ``sample_with_log_prob(noise)`` returns latents and their log-density together, in one
  pass where the family allows it (flows).

Families: ``"gaussian"`` (full covariance), ``"autoregressive"`` (a MADE-masked mixture of
Gaussians per latent dimension), ``"flow"`` (conditional masked affine autoregressive flow)
and ``"spline"`` (conditional rational-quadratic spline flow). The flows come from nflows,
imported only when such a posterior is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal, constraints

from afa.nn import MADE, ResidualMLP, masked_input

__all__ = [
    "POSTERIOR_FAMILIES",
    "AutoregressiveMixture",
    "ConditionalFlow",
    "FullCovarianceGaussian",
    "PartialPosterior",
    "make_partial_posterior",
]

_MIN_SCALE = 1e-4
_SCALAR_SHAPE = torch.Size()


def _standard_normal_log_prob(noise: torch.Tensor) -> torch.Tensor:
    return -0.5 * (noise.square().sum(-1) + noise.shape[-1] * math.log(2 * math.pi))


class _NoiseSampling:
    """Default ``sample``/``sample_with_log_prob`` for distributions defined by ``from_noise``."""

    noise_dim: int

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_with_log_prob(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z, log q(z))`` for ``z = from_noise(noise)``."""
        z = self.from_noise(noise)
        return z, self.log_prob(z)  # type: ignore[attr-defined]

    def _noise(self, sample_shape: torch.Size) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + (self.noise_dim,)  # type: ignore[attr-defined]
        return torch.randn(shape, device=self._device)  # type: ignore[attr-defined]


class FullCovarianceGaussian(_NoiseSampling, MultivariateNormal):
    """A multivariate normal with a Cholesky factor, sampled from shared noise.

    Examples
    --------
    >>> q = FullCovarianceGaussian(torch.zeros(3, 2), scale_tril=torch.eye(2).expand(3, 2, 2))
    >>> q.from_noise(torch.ones(5, 1, 2)).shape
    torch.Size([5, 3, 2])
    """

    @property
    def noise_dim(self) -> int:
        return self.event_shape[0]

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """``loc + scale_tril @ noise``, broadcasting ``noise`` over the batch."""
        return self.loc + (self._unbroadcasted_scale_tril @ noise.unsqueeze(-1)).squeeze(-1)


class AutoregressiveMixture(_NoiseSampling, Distribution):
    """Autoregressive mixture of Gaussians: ``q(z) = Π_i Σ_c π_ic N(z_i; μ_ic, σ_ic)``.

    The parameters of dimension ``i`` come from a :class:`~afa.nn.MADE` that sees ``z_<i`` and
    the row's context, so ``log_prob`` is one pass and sampling is ``L`` passes. Not
    reparameterisable (``has_rsample`` is False); the noise has ``2 L`` dimensions: ``L``
    normals for the values and ``L`` more whose normal CDFs choose the components.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, made: MADE, context: torch.Tensor, n_components: int) -> None:
        self.made = made
        self.context = context
        self.n_components = n_components
        self._device = context.device
        super().__init__(context.shape[:1], torch.Size([made.n_features]), validate_args=False)

    @property
    def noise_dim(self) -> int:
        return 2 * self.event_shape[0]

    def _mixture_parameters(
        self, outputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-weights, means and scales from MADE outputs ``(..., 3 * n_components)``."""
        outputs = outputs.unflatten(-1, (self.n_components, 3))
        log_weights = torch.log_softmax(outputs[..., 0], dim=-1)
        scales = nn.functional.softplus(outputs[..., 2]) + _MIN_SCALE
        return log_weights, outputs[..., 1], scales

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_weights, means, scales = self._mixture_parameters(self.made(value, self.context))
        standardized = (value.unsqueeze(-1) - means) / scales
        component_log_prob = (
            -0.5 * standardized.square() - torch.log(scales) - 0.5 * math.log(2 * math.pi)
        )
        return torch.logsumexp(log_weights + component_log_prob, dim=-1).sum(-1)

    @torch.no_grad()
    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        latent_dim = self.event_shape[0]
        values, choosers = noise[..., :latent_dim], noise[..., latent_dim:]
        uniforms = torch.special.ndtr(choosers)
        z = torch.zeros(
            torch.broadcast_shapes(noise.shape[:-1], self.batch_shape) + (latent_dim,),
            device=noise.device,
            dtype=noise.dtype,
        )
        for i in range(latent_dim):  # one MADE pass per dimension, computing only its block
            outputs = self.made(z, self.context, feature=i)
            log_weights, means, scales = self._mixture_parameters(outputs)
            cumulative = torch.cumsum(log_weights.exp(), dim=-1)
            component = (cumulative < uniforms[..., i : i + 1]).sum(-1, keepdim=True)
            component = component.clamp(max=self.n_components - 1)
            mean = means.gather(-1, component).squeeze(-1)
            scale = scales.gather(-1, component).squeeze(-1)
            z[..., i] = mean + scale * values[..., i]
        return z

    def sample(self, sample_shape: torch.Size = _SCALAR_SHAPE) -> torch.Tensor:
        return self.from_noise(self._noise(sample_shape))


class ConditionalFlow(_NoiseSampling, Distribution):
    """A standard normal pushed through a context-conditioned nflows transform."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, transform: nn.Module, context: torch.Tensor, latent_dim: int) -> None:
        self.transform = transform
        self.context = context
        self._device = context.device
        super().__init__(context.shape[:1], torch.Size([latent_dim]), validate_args=False)

    @property
    def noise_dim(self) -> int:
        return self.event_shape[0]

    def _flatten(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        shape = torch.broadcast_shapes(tensor.shape[:-1], self.batch_shape)
        flat = tensor.expand(shape + tensor.shape[-1:]).reshape(-1, tensor.shape[-1])
        context = self.context.expand(shape + self.context.shape[-1:]).reshape(flat.shape[0], -1)
        return flat, context, shape

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        flat, context, shape = self._flatten(value)
        noise, log_det = self.transform(flat, context=context)
        return (_standard_normal_log_prob(noise) + log_det).reshape(shape)

    def sample_with_log_prob(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat, context, shape = self._flatten(noise)
        z, log_det = self.transform.inverse(flat, context=context)
        log_prob = _standard_normal_log_prob(flat) - log_det
        return z.reshape(shape + z.shape[-1:]), log_prob.reshape(shape)

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return self.sample_with_log_prob(noise)[0]

    def rsample(self, sample_shape: torch.Size = _SCALAR_SHAPE) -> torch.Tensor:
        return self.from_noise(self._noise(sample_shape))


class PartialPosterior(nn.Module):
    """Base class: a residual MLP reads ``concat(x * mask, mask)`` and returns a context.

    Subclasses turn the context into a distribution in :meth:`distribution`.

    Parameters
    ----------
    n_features : int
        Width ``d`` of a row.
    latent_dim : int
        Dimension ``L`` of ``z``.
    hidden_layer_sizes : sequence of int
        Widths of the residual blocks.
    dropout : float, default=0.0
        Dropout inside the residual blocks.
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        hidden_layer_sizes: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.trunk = ResidualMLP(
            2 * n_features, self._context_features(hidden_layer_sizes), hidden_layer_sizes, dropout
        )

    def _context_features(self, hidden_layer_sizes: Sequence[int]) -> int:
        return hidden_layer_sizes[-1]

    @property
    def noise_dim(self) -> int:
        """Standard normals per latent draw (see ``from_noise``)."""
        return self.latent_dim

    def distribution(self, context: torch.Tensor) -> Distribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Distribution:
        """Return ``q(z | x_o)`` for rows ``x`` observed where ``mask`` is True."""
        return self.distribution(self.trunk(masked_input(x, mask)))


class GaussianPosterior(PartialPosterior):
    """Full-covariance Gaussian ``N(μ(x_o), L L^T)``; also the VAE's own encoder."""

    def _context_features(self, hidden_layer_sizes: Sequence[int]) -> int:
        latent_dim = self.latent_dim
        return latent_dim + latent_dim * (latent_dim + 1) // 2

    def distribution(self, context: torch.Tensor) -> FullCovarianceGaussian:
        latent_dim = self.latent_dim
        loc, raw = context[..., :latent_dim], context[..., latent_dim:]
        rows, cols = torch.tril_indices(latent_dim, latent_dim, device=context.device)
        tril = context.new_zeros(context.shape[:-1] + (latent_dim, latent_dim))
        tril[..., rows, cols] = raw
        diagonal = nn.functional.softplus(tril.diagonal(dim1=-2, dim2=-1)) + _MIN_SCALE
        tril = tril.tril(-1) + torch.diag_embed(diagonal)
        return FullCovarianceGaussian(loc, scale_tril=tril, validate_args=False)


class AutoregressivePosterior(PartialPosterior):
    """Mixture-of-Gaussians autoregressive posterior (MADE-masked, ``log_prob`` in one pass)."""

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        hidden_layer_sizes: Sequence[int],
        dropout: float = 0.0,
        n_components: int = 10,
    ) -> None:
        super().__init__(n_features, latent_dim, hidden_layer_sizes, dropout)
        width = hidden_layer_sizes[-1]
        self.n_components = n_components
        self.made = MADE(latent_dim, width, width, 3 * n_components, n_blocks=0)

    @property
    def noise_dim(self) -> int:
        """``L`` normals for the values and ``L`` more that choose the mixture components."""
        return 2 * self.latent_dim

    def distribution(self, context: torch.Tensor) -> AutoregressiveMixture:
        return AutoregressiveMixture(self.made, context, self.n_components)


class FlowPosterior(PartialPosterior):
    """Conditional autoregressive flow from nflows: affine (MAF) or rational-quadratic spline."""

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        hidden_layer_sizes: Sequence[int],
        dropout: float = 0.0,
        transform: str = "affine",
        n_layers: int = 2,
    ) -> None:
        super().__init__(n_features, latent_dim, hidden_layer_sizes, dropout)
        self.transform = _nflows_transform(transform, latent_dim, hidden_layer_sizes[-1], n_layers)

    def distribution(self, context: torch.Tensor) -> ConditionalFlow:
        return ConditionalFlow(self.transform, context, self.latent_dim)


def _nflows_transform(kind: str, latent_dim: int, width: int, n_layers: int) -> nn.Module:
    from nflows.transforms import (  # imported lazily: nflows is slow to import
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        ReversePermutation,
    )

    layers: list[nn.Module] = []
    for _ in range(n_layers):
        if kind == "affine":
            layer = MaskedAffineAutoregressiveTransform(
                features=latent_dim, hidden_features=width, context_features=width, num_blocks=1
            )
        else:
            layer = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features=latent_dim,
                hidden_features=width,
                context_features=width,
                num_bins=8,
                tails="linear",
                tail_bound=6.0,
                num_blocks=1,
            )
        layers += [layer, ReversePermutation(latent_dim)]
    return CompositeTransform(layers)


def _spline_posterior(
    n_features: int, latent_dim: int, hidden_layer_sizes: Sequence[int], dropout: float = 0.0
) -> FlowPosterior:
    return FlowPosterior(n_features, latent_dim, hidden_layer_sizes, dropout, transform="spline")


POSTERIOR_FAMILIES = {
    "gaussian": GaussianPosterior,
    "autoregressive": AutoregressivePosterior,
    "flow": FlowPosterior,
    "spline": _spline_posterior,
}


def make_partial_posterior(
    family: str,
    n_features: int,
    latent_dim: int,
    hidden_layer_sizes: Sequence[int],
    dropout: float = 0.0,
) -> PartialPosterior:
    """Build a partial posterior of the named family.

    Parameters
    ----------
    family : {"gaussian", "autoregressive", "flow", "spline"}
    n_features, latent_dim : int
    hidden_layer_sizes : sequence of int
    dropout : float, default=0.0

    Returns
    -------
    PartialPosterior

    Examples
    --------
    >>> q = make_partial_posterior("gaussian", 4, 2, (8,))
    >>> x, mask = torch.zeros(3, 4), torch.ones(3, 4, dtype=torch.bool)
    >>> q(x, mask).log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
    """
    if family not in POSTERIOR_FAMILIES:
        raise ValueError(
            f"Unknown posterior family {family!r}; choose one of {sorted(POSTERIOR_FAMILIES)}."
        )
    return POSTERIOR_FAMILIES[family](n_features, latent_dim, hidden_layer_sizes, dropout)
