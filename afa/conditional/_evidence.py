"""The evidence of a batch of queries, ``log p(x_o | z)``, and the exact 2-D grid posterior."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from afa.models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from afa.nn import ResidualMLP

__all__ = [
    "ELEMENTS_PER_CHUNK",
    "Evidence",
    "grid_log_posterior",
    "grid_points",
    "on_points",
    "standard_normal_log_prob",
]

_LOG_2PI = math.log(2 * math.pi)
ELEMENTS_PER_CHUNK = 2**22  # decoder outputs (draws x queries x features) evaluated at once


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` over the last dimension."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * _LOG_2PI)


class _ObservedHead(NamedTuple):
    """A ResidualMLP decoder's output layers restricted, per query, to the evidence columns.

    Each query's ``K`` observed features are listed, padded (``valid`` False) to the longest.
    ``weight`` stacks, per listed output, the decoder's head row and shortcut row, so one
    batched product of ``[hidden, z]`` gives the outputs. With binary Bernoulli evidence the
    rows are multiplied by ``2x - 1`` (0 for padding), so an entry's log-probability is
    ``logsigmoid(output)``; a padded output is then exactly 0, contributing ``-log 2``, which
    ``signed_padding`` (None for unsigned rows) adds back.
    """

    valid: torch.Tensor
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    signed_padding: torch.Tensor | None = None

    def subset(self, index: torch.Tensor) -> _ObservedHead:
        return _ObservedHead(*(None if tensor is None else tensor[index] for tensor in self))


def _observed_head(
    decoder: nn.Module, likelihood: nn.Module, x: torch.Tensor, mask: torch.Tensor
) -> _ObservedHead | None:
    """The restricted head when the decoder and likelihood allow it, else None.

    Only the evidence enters ``log p(x_o | z)``; with sparse evidence, computing the decoder's
    outputs for the observed features alone saves most of the work. It needs a
    :class:`~afa.nn.ResidualMLP` decoder and a likelihood whose parameters are per-feature
    decoder outputs (Bernoulli, heteroscedastic Gaussian). Binary Bernoulli evidence gets
    signed rows.
    """
    per_feature = {BernoulliLikelihood: 1, GaussianLikelihood: 2}.get(type(likelihood))
    if not isinstance(decoder, ResidualMLP) or per_feature is None:
        return None
    if per_feature == 2 and likelihood.raw_scale.numel() > 0:
        return None  # a learned scale per feature: not a decoder output
    counts = mask.sum(-1)
    width = max(int(counts.max()), 1) if len(counts) else 1
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device) < counts.unsqueeze(-1)
    columns = torch.where(valid, order, torch.zeros_like(order))
    outputs = torch.cat([columns + k * x.shape[-1] for k in range(per_feature)], dim=-1)
    weight = torch.cat([decoder.head.weight[outputs], decoder.shortcut.weight[outputs]], -1)
    head = _ObservedHead(valid, x.gather(1, columns), weight, decoder.head.bias[outputs])
    if per_feature == 1 and bool(((head.x == 0) | (head.x == 1) | ~valid).all()):
        return _signed(head)
    return head


def _signed(head: _ObservedHead) -> _ObservedHead:
    """The head with each output row multiplied by ``2x - 1`` (0 for padding)."""
    sign = torch.where(head.valid, 2 * head.x - 1, torch.zeros_like(head.x))
    padding = (~head.valid).sum(-1).to(head.weight.dtype) * math.log(2.0)
    weight, bias = head.weight * sign.unsqueeze(-1), head.bias * sign
    return _ObservedHead(head.valid, head.x, weight, bias, padding)


@dataclass(frozen=True)
class Evidence:
    """``log p(x_o | z)`` of a frozen decoder for a batch of ``Q`` queries.

    Parameters
    ----------
    decoder : nn.Module
        Maps latents ``(..., L)`` to decoder outputs.
    likelihood : nn.Module
        An afa likelihood: ``log_prob(x, decoder_output, mask)`` sums over masked entries.
    x : Tensor of shape (Q, d)
        The queries' rows (unobserved entries may hold anything finite).
    mask : bool Tensor of shape (Q, d)
        True where an entry is evidence.

    Notes
    -----
    With an afa :class:`~afa.nn.ResidualMLP` decoder and a Bernoulli or heteroscedastic
    Gaussian likelihood, ``log_likelihood`` computes the decoder's outputs for each query's
    observed features only (a batched product with per-query weight rows), so sparse
    evidence costs a fraction of a full decoding. Binary Bernoulli evidence then costs one
    ``logsigmoid`` per entry.
    """

    decoder: nn.Module
    likelihood: nn.Module
    x: torch.Tensor
    mask: torch.Tensor
    observed_head: _ObservedHead | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.observed_head is None:
            head = _observed_head(self.decoder, self.likelihood, self.x, self.mask)
            object.__setattr__(self, "observed_head", head)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def latent_dim(self) -> int:
        """Width of the decoder's input."""
        first = next(module for module in self.decoder.modules() if isinstance(module, nn.Linear))
        return first.in_features

    def subset(self, index: torch.Tensor) -> Evidence:
        """The evidence of the queries in ``index``."""
        head = None if self.observed_head is None else self.observed_head.subset(index)
        return Evidence(self.decoder, self.likelihood, self.x[index], self.mask[index], head)

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_o | z)`` for latents of shape ``(..., Q, L)``; returns ``(..., Q)``."""
        head = self.observed_head
        if head is None:
            return self.likelihood.log_prob(self.x, self.decoder(z), self.mask)
        hidden = torch.relu(self.decoder.layers(self.decoder.stem(z)))
        inputs = torch.cat([hidden, z], -1)
        output = torch.einsum("...qh,qkh->...qk", inputs, head.weight) + head.bias
        if head.signed_padding is not None:
            return nn.functional.logsigmoid(output).sum(-1) + head.signed_padding
        element = self.likelihood.element_log_prob(head.x, output)
        return torch.where(head.valid, element, torch.zeros_like(element)).sum(-1)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z) + log p(x_o | z)``, the unnormalised log-posterior."""
        return self.log_likelihood(z) + standard_normal_log_prob(z)


def grid_points(
    latent_dim: int, limit: float, resolution: int, device: torch.device
) -> torch.Tensor:
    """The ``resolution^L`` points of a regular grid over ``[-limit, limit]^L``: ``(G, L)``."""
    axis = torch.linspace(-limit, limit, resolution, device=device)
    mesh = torch.meshgrid(*([axis] * latent_dim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def on_points(
    function: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, evidence: Evidence
) -> torch.Tensor:
    """``function`` at every point for every query, in chunks: shape ``(G, Q)``."""
    per_chunk = max(1, ELEMENTS_PER_CHUNK // (len(evidence) * evidence.x.shape[1]))
    return torch.cat([function(chunk.unsqueeze(1)) for chunk in points.split(per_chunk)])


def grid_log_posterior(
    evidence: Evidence, limit: float = 5.0, resolution: int = 401
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact posterior of a 2-D latent on a ``resolution²`` grid over ``[-limit, limit]²``.

    Returns
    -------
    points : Tensor of shape (G, 2)
        The grid points (``G = resolution²``, row-major over the first coordinate).
    log_mass : Tensor of shape (G, Q)
        Normalised log-probability of each grid cell.
    log_evidence : Tensor of shape (Q,)
        ``log p(x_o)`` by the rectangle rule, the reference value for the C-ELBO.
    """
    if evidence.latent_dim != 2:
        raise ValueError(f"grid_log_posterior needs a 2-D latent; got {evidence.latent_dim}.")
    points = grid_points(2, limit, resolution, evidence.x.device)
    with torch.no_grad():
        log_joint = on_points(evidence.log_joint, points, evidence)
    normaliser = torch.logsumexp(log_joint, 0)
    cell_area = (2 * limit / (resolution - 1)) ** 2
    return points, log_joint - normaliser, normaliser + math.log(cell_area)
