"""Reference samplers of ``p(z | x_o)``: HMC, rejection (latents ≤ 2) and pseudo-Gibbs."""

from __future__ import annotations

import math

import torch
from torch import nn

from afa.conditional._evidence import (
    ELEMENTS_PER_CHUNK,
    Evidence,
    grid_points,
    on_points,
    standard_normal_log_prob,
)
from afa.conditional._optimise import minimize_lbfgs

__all__ = ["hmc_sample", "pseudo_gibbs_sample", "rejection_sample"]

_MAX_REJECTION_LATENT = 2
_BOUND_TOLERANCE = 1e-3  # nats a proposal may exceed the rejection bound (float32 rounding)


def _log_joint_and_grad(evidence: Evidence, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        value = evidence.log_joint(leaf)
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return value.detach(), grad


def hmc_sample(
    evidence: Evidence,
    n_samples: int,
    generator: torch.Generator,
    n_chains: int = 32,
    n_burnin: int = 500,
    n_leapfrog: int = 10,
    target_acceptance: float = 0.65,
) -> torch.Tensor:
    """Hamiltonian Monte Carlo on ``p(z | x_o)``, with ``n_chains`` chains per query.

    Chains start at prior draws. During burn-in each query's step size is adapted (by a
    Robbins-Monro update of its logarithm) towards ``target_acceptance``; afterwards it is
    fixed and every chain contributes consecutive draws until ``n_samples`` are collected.

    Limits: a chain rarely crosses between separated modes, so on a multimodal posterior
    the modes' weights follow where the chains started rather than the posterior; and one
    step size per query mixes slowly along a direction much wider than the narrowest one.
    In two dimensions, ``rejection_sample`` is exact.

    Returns
    -------
    Tensor of shape (n_samples, Q, L)
    """
    device = evidence.x.device
    L = evidence.latent_dim
    chains = min(n_chains, n_samples)
    z = torch.randn(chains, len(evidence), L, generator=generator).to(device)
    log_step = torch.full((len(evidence),), math.log(0.1), device=device)
    value, grad = _log_joint_and_grad(evidence, z)
    draws = []
    n_after = math.ceil(n_samples / chains)
    for iteration in range(n_burnin + n_after):
        step = log_step.exp().unsqueeze(-1)
        momentum = torch.randn(z.shape, generator=generator).to(device)
        position, p, g = z, momentum + 0.5 * step * grad, grad
        for leap in range(n_leapfrog):
            position = position + step * p
            proposal_value, g = _log_joint_and_grad(evidence, position)
            p = p + (step if leap < n_leapfrog - 1 else 0.5 * step) * g
        log_accept = proposal_value - value - 0.5 * (p.square().sum(-1) - momentum.square().sum(-1))
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
        uniforms = torch.rand(log_accept.shape, generator=generator).to(device)
        accept = torch.log(uniforms) < log_accept
        z = torch.where(accept.unsqueeze(-1), position, z)
        value = torch.where(accept, proposal_value, value)
        grad = torch.where(accept.unsqueeze(-1), g, grad)
        if iteration < n_burnin:
            rate = log_accept.clamp(max=0).exp().mean(0)
            log_step = log_step + (rate - target_acceptance) / (iteration + 10) ** 0.6
        else:
            draws.append(z)
    return torch.cat(draws)[:n_samples]


class _DefensiveProposal:
    """``q(z) = ½ N(μ, s² T Tᵀ) + ½ N(0, I)`` per query: a widened Gaussian plus the prior.

    The prior half keeps ``p(z | x_o) / q(z) ≤ 2 p(x_o | z)`` bounded everywhere, so a
    rejection bound exists; the Gaussian half puts most proposals where the posterior is.
    """

    def __init__(self, loc: torch.Tensor, tril: torch.Tensor, widening: float = 1.5) -> None:
        self.loc, self.tril = loc, widening * tril
        self.log_det = torch.log(self.tril.diagonal(dim1=-2, dim2=-1)).sum(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` for ``z`` of shape ``(..., Q, L)``."""
        centred = (z - self.loc).unsqueeze(-1)
        tril = self.tril.expand(*centred.shape[:-2], -1, -1)
        white = torch.linalg.solve_triangular(tril, centred, upper=False).squeeze(-1)
        fitted = standard_normal_log_prob(white) - self.log_det
        return torch.logaddexp(fitted, standard_normal_log_prob(z)) - math.log(2)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws per query: shape ``(n, Q, L)``."""
        noise = torch.randn(n, *self.loc.shape, generator=generator).to(self.loc.device)
        fitted = self.loc + torch.einsum("qij,nqj->nqi", self.tril, noise)
        use_prior = torch.rand(n, self.loc.shape[0], 1, generator=generator) < 0.5
        return torch.where(use_prior.to(self.loc.device), noise, fitted)


def _grid_limit(evidence: Evidence, limit: float) -> float:
    """A half-width for the grid that holds every query's posterior mode with room around it.

    The modes are found by L-BFGS from the best point of a ``[-limit, limit]^L`` grid; a
    posterior pulled far from the prior gets a wider grid (mode plus 6 on each side).
    """
    grid = grid_points(evidence.latent_dim, limit, 41, evidence.x.device)
    with torch.no_grad():
        log_joint = on_points(evidence.log_joint, grid, evidence)

    def negative(params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return -evidence.subset(index).log_joint(params)

    modes = minimize_lbfgs(negative, grid[log_joint.argmax(0)], max_iter=200, tol=1e-7).params
    farthest = float(modes.abs().max()) if torch.isfinite(modes).all() else 0.0
    return max(limit, farthest + 6.0)


def _grid_proposal(
    evidence: Evidence, resolution: int = 201, limit: float = 6.0
) -> tuple[_DefensiveProposal, torch.Tensor]:
    """The proposal, moment-matched to the grid posterior, and its bound on the log ratio.

    The Gaussian half takes the mean and covariance of ``p(z | x_o)`` on a grid (wide enough
    for every query's mode, see :func:`_grid_limit`), so it spans every mode; the bound
    ``max_z log p(z, x_o) - log q(z)`` is the grid's maximum refined by L-BFGS.
    """
    limit = _grid_limit(evidence, limit)
    grid = grid_points(evidence.latent_dim, limit, resolution, evidence.x.device)
    with torch.no_grad():
        log_joint = on_points(evidence.log_joint, grid, evidence)
    weights = torch.softmax(log_joint, dim=0)  # (G, Q)
    loc = weights.T @ grid
    centred = grid.unsqueeze(1) - loc  # (G, Q, L)
    covariance = torch.einsum("gq,gqi,gqj->qij", weights, centred, centred)
    spacing = 2 * limit / (resolution - 1)
    identity = torch.eye(evidence.latent_dim, device=grid.device)
    proposal = _DefensiveProposal(loc, torch.linalg.cholesky(covariance + spacing**2 * identity))
    values = log_joint - proposal.log_prob(grid.unsqueeze(1))

    def negative(params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        part = _DefensiveProposal(proposal.loc[index], proposal.tril[index], widening=1.0)
        return part.log_prob(params) - evidence.subset(index).log_joint(params)

    refined = minimize_lbfgs(negative, grid[values.argmax(0)], max_iter=100, tol=1e-7)
    return proposal, torch.maximum(values.amax(0), -refined.loss)


def rejection_sample(
    evidence: Evidence,
    n_samples: int,
    generator: torch.Generator,
    max_proposals: int = 1_000_000,
) -> torch.Tensor:
    """Exact rejection sampling from ``p(z | x_o)`` (latents of at most 2 dimensions).

    The proposal mixes a widened Gaussian, moment-matched to the posterior on a grid over
    ``[-6, 6]^L`` (wider when a posterior mode lies far out), so it spans every mode, with
    the prior, which keeps the density ratio bounded; the bound ``M`` is the grid's maximum
    refined by L-BFGS. A draw is accepted with probability ``p(z, x_o) / (M q(z))``. Should
    a proposal ever exceed the bound (by more than float32 rounding, 0.001 nats), that
    query's bound is raised to it and its accepted draws are discarded, so every returned
    draw was accepted under a bound no proposal exceeded.

    Returns
    -------
    Tensor of shape (n_samples, Q, L)

    Raises
    ------
    ValueError
        When the latent has more than 2 dimensions.
    RuntimeError
        When a query accepts fewer than ``n_samples`` draws within ``max_proposals``.
    """
    L = evidence.latent_dim
    if L > _MAX_REJECTION_LATENT:
        raise ValueError(
            f"inference='rejection' needs a latent of at most {_MAX_REJECTION_LATENT} "
            f"dimensions (its acceptance rate collapses above); this VAE has {L}."
        )
    proposal, bound = _grid_proposal(evidence)
    draws = torch.full((n_samples, len(evidence), L), math.nan, device=evidence.x.device)
    counts = torch.zeros(len(evidence), dtype=torch.long, device=evidence.x.device)
    proposed = 0
    with torch.no_grad():
        while proposed < max_proposals:
            rows = torch.nonzero(counts < n_samples).squeeze(-1)
            if rows.numel() == 0:
                break
            per_round = max(64, ELEMENTS_PER_CHUNK // (rows.numel() * evidence.x.shape[1]))
            proposed += per_round
            part = _DefensiveProposal(proposal.loc[rows], proposal.tril[rows], widening=1.0)
            z = part.sample(per_round, generator)
            log_ratio = evidence.subset(rows).log_joint(z) - part.log_prob(z) - bound[rows]
            exceeded = log_ratio.amax(0) > _BOUND_TOLERANCE
            if bool(exceeded.any()):  # the bound was wrong: raise it and start those again
                bound[rows[exceeded]] += log_ratio.amax(0)[exceeded]
                counts[rows[exceeded]] = 0
                log_ratio[:, exceeded] = -math.inf
            uniforms = torch.rand(log_ratio.shape, generator=generator).to(z.device)
            keep = torch.log(uniforms) < log_ratio
            slot = counts[rows] + keep.long().cumsum(0) - 1  # where each accepted draw goes
            store = keep & (slot < n_samples)
            proposal_index, column = torch.nonzero(store, as_tuple=True)
            draws[slot[proposal_index, column], rows[column]] = z[proposal_index, column]
            counts[rows] += store.long().sum(0)
    short = torch.nonzero(counts < n_samples).squeeze(-1)
    if short.numel():
        raise RuntimeError(
            f"Rejection sampling accepted fewer than {n_samples} draws within {max_proposals} "
            f"proposals for queries {short.tolist()[:10]}; use inference='hmc'."
        )
    return draws


def pseudo_gibbs_sample(
    evidence: Evidence,
    encoder: nn.Module,
    n_samples: int,
    generator: torch.Generator,
    n_chains: int = 32,
    n_burnin: int = 500,
) -> torch.Tensor:
    """The pseudo-Gibbs alternation of Rezende et al. (2014) with the VAE's own encoder.

    Each chain alternates ``z ~ q(z | x̂)`` and ``x̂_u ~ p(x_u | z)``, keeping ``x̂_o = x_o``.
    The encoder stands in for the exact ``p(z | x)``, so the chain targets ``p(z | x_o)`` only
    as well as the encoder matches the VAE's posterior.

    Returns
    -------
    Tensor of shape (n_samples, Q, L)
    """
    device = evidence.x.device
    chains = min(n_chains, n_samples)
    x = evidence.x.expand(chains, -1, -1)
    mask = evidence.mask  # (Q, d): likelihoods broadcast it over the chains
    everything = torch.ones_like(x, dtype=torch.bool)
    filled = torch.where(mask, x, torch.zeros_like(x))
    draws = []
    for iteration in range(n_burnin + math.ceil(n_samples / chains)):
        posterior = encoder(filled.reshape(-1, x.shape[-1]), everything.reshape(-1, x.shape[-1]))
        noise = torch.randn(posterior.loc.shape, generator=generator).to(device)
        z = posterior.from_noise(noise).reshape(chains, len(evidence), -1)
        value_noise = torch.randn(x.shape, generator=generator).to(device)
        filled = evidence.likelihood.conditional_sample(x, evidence.decoder(z), mask, value_noise)
        if iteration >= n_burnin:
            draws.append(z)
    return torch.cat(draws)[:n_samples]
