"""Lookahead posteriors: the posterior after each possible acquisition, from one network.

Greedy acquisition asks, for every unobserved feature (or group of features) ``a``, how much
acquiring it would shrink the posterior over ``z``. With a Posterior-Matching VAE that is

    IG_a = H[q(z | x_o)] - E_{x_a ~ p(x_a | x_o)} H[q(z | x_o, x_a)],

which :func:`one_step_entropies` estimates by explicit completions (the slow, sampling
strategy), and which :class:`LookaheadNetwork` predicts for every ``a`` in one forward pass
(Strauss & Oliva, 2022, §3.5). With a target column ``φ`` the gain is EDDI's reward
(Ma et al., 2019), written with entropies:

    R_a = [H(z | o) - E H(z | o, a)] - [E H(z | o, φ) - E H(z | o, a, φ)],

the information ``x_a`` carries about ``z`` beyond what it carries once ``x_φ`` is known.
Each quantity is an expected entropy in one of two *scenarios* (``φ`` hidden or revealed)
after one of ``A + 1`` *actions* (nothing, or one of the ``A`` acquisitions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal

from afa.nn import ResidualMLP, masked_input

__all__ = [
    "ENTROPY_HEADS",
    "AcquisitionProblem",
    "LookaheadNetwork",
    "LookaheadObjective",
    "information_gains",
    "one_step_entropies",
]

ENTROPY_HEADS = ("entropy", "mixture")
_MIN_SCALE = 1e-5


@dataclass(frozen=True)
class AcquisitionProblem:
    """What can be acquired, and what acquisition is for.

    Parameters
    ----------
    actions : bool Tensor of shape (A, d)
        Row ``a`` marks the columns that acquisition ``a`` reveals (a feature or a group).
    target : bool Tensor of shape (d,) or None
        The columns to predict; None means acquisition is about the whole row (``z``).
    """

    actions: torch.Tensor
    target: torch.Tensor | None = None

    @property
    def n_actions(self) -> int:
        return self.actions.shape[0]

    @property
    def n_scenarios(self) -> int:
        """1 without a target; 2 with one (target hidden, target revealed)."""
        return 1 if self.target is None else 2

    def with_nothing(self, actions: torch.Tensor) -> torch.Tensor:
        """``actions`` (A', d) preceded by the empty action: shape (A' + 1, d)."""
        return torch.cat([torch.zeros_like(actions[:1]), actions])

    def scenario_masks(self, state: torch.Tensor) -> torch.Tensor:
        """The observed masks of each scenario: shape (S, n, d)."""
        if self.target is None:
            return state.unsqueeze(0)
        return torch.stack([state, state | self.target])

    def available(self, state: torch.Tensor) -> torch.Tensor:
        """(n, A): True where the action would reveal at least one unobserved column."""
        return (self.actions.unsqueeze(0) & ~state.unsqueeze(1)).any(-1)


def posterior_entropy(
    posterior: Distribution, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of each distribution in a batch, and one draw from it.

    Analytic for Gaussians; otherwise ``-log q(z)`` at the draw, an unbiased one-sample
    estimate (averaging over completions, or regressing on it, gives the expectation).
    ``noise`` has shape ``(1, N, noise_dim)`` for a batch of ``N``.
    """
    if isinstance(posterior, MultivariateNormal):  # exact: no log-density needed at the draw
        z = posterior.from_noise(noise)
        return posterior.entropy().expand(z.shape[:-1]).squeeze(0), z.squeeze(0)
    z, log_prob = posterior.sample_with_log_prob(noise)
    return -log_prob.squeeze(0), z.squeeze(0)


def one_step_entropies(
    base: nn.Module,
    x: torch.Tensor,
    state: torch.Tensor,
    actions: torch.Tensor,
    problem: AcquisitionProblem,
    completion_noise: torch.Tensor,
    entropy_noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior entropies after each action, for completions drawn from the model.

    Draws ``z_k ~ q(z | x_o)``, completes each row with the decoder mean ``x̂_k`` (observed
    entries kept) and evaluates ``q(z | x_o, x̂_{k,a})`` for every scenario and action.

    Parameters
    ----------
    base : PosteriorMatchingVAE
        Frozen; read only.
    x, state : Tensors of shape (n, d)
        Rows and their observed masks.
    actions : bool Tensor of shape (A', d)
        The actions to evaluate (include an all-False row for "nothing").
    problem : AcquisitionProblem
    completion_noise : Tensor of shape (K, n or 1, noise_dim)
    entropy_noise : Tensor broadcastable to (K, S, A', n, noise_dim)

    Returns
    -------
    entropies : Tensor of shape (K, S, A', n)
    draws : Tensor of shape (K, S, A', n, L)
        One draw from each evaluated posterior.
    """
    completions = base.decoder_means(x, state, completion_noise)  # (K, n, d)
    revealed = problem.scenario_masks(state)[:, None] | actions[None, :, None, :]  # (S, A', n, d)
    shape = (completions.shape[0],) + revealed.shape[:-1]
    inputs = completions[:, None, None].expand(shape + (x.shape[-1],))
    masks = revealed.unsqueeze(0).expand_as(inputs)
    posterior = base.partial_posterior(
        inputs.reshape(-1, x.shape[-1]), masks.reshape(-1, x.shape[-1])
    )
    noise = entropy_noise.expand(shape + (entropy_noise.shape[-1],)).reshape(
        1, -1, entropy_noise.shape[-1]
    )
    entropies, draws = posterior_entropy(posterior, noise)
    return entropies.reshape(shape), draws.reshape(shape + (draws.shape[-1],))


def information_gains(entropies: torch.Tensor) -> torch.Tensor:
    """Gains ``(n, A)`` from expected entropies ``(n, S, A + 1)`` (action 0 is "nothing")."""
    gains = entropies[:, 0, :1] - entropies[:, 0, 1:]
    if entropies.shape[1] == 2:
        gains = gains - (entropies[:, 1, :1] - entropies[:, 1, 1:])
    return gains


class LookaheadNetwork(nn.Module):
    """Predicts the posterior after every action, from ``concat(x * b, b)``, in one pass.

    Two heads share a residual trunk; both cover every scenario and the ``A + 1`` actions:

    - ``"mixture"``: a diagonal Gaussian ``g_a(z | x_o)``, fitted by maximum likelihood to
      draws from the one-step-ahead posteriors (the reference code's lookahead posterior: a
      moment match of the mixture over ``x_a``); its entropy stands in for the expected one;
    - ``"entropy"``: the expected entropy ``E_{x_a} H[q(z | x_o, x_a)]`` itself, regressed
      on one-completion estimates.

    Parameters
    ----------
    n_features, latent_dim, n_actions, n_scenarios : int
    hidden_layer_sizes : sequence of int
    dropout : float, default=0.0
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        n_actions: int,
        n_scenarios: int,
        hidden_layer_sizes: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.grid = (n_scenarios, n_actions + 1)
        width = hidden_layer_sizes[-1]
        self.trunk = ResidualMLP(2 * n_features, width, hidden_layer_sizes, dropout)
        self.gaussians = nn.Linear(width, n_scenarios * (n_actions + 1) * 2 * latent_dim)
        self.entropies = nn.Linear(width, n_scenarios * (n_actions + 1))

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gaussian means and scales ``(n, S, A + 1, L)``; entropies ``(n, S, A + 1)``."""
        hidden = torch.relu(self.trunk(masked_input(x, state)))
        gaussians = self.gaussians(hidden).unflatten(-1, self.grid + (2, self.latent_dim))
        loc, raw_scale = gaussians.unbind(-2)
        scale = nn.functional.softplus(raw_scale) + _MIN_SCALE
        return loc, scale, self.entropies(hidden).unflatten(-1, self.grid)

    def expected_entropies(self, x: torch.Tensor, state: torch.Tensor, head: str) -> torch.Tensor:
        """The chosen head's expected entropies, shape ``(n, S, A + 1)``."""
        loc, scale, entropies = self(x, state)
        if head == "entropy":
            return entropies
        if head == "mixture":
            return torch.log(scale).sum(-1) + 0.5 * self.latent_dim * (1.0 + math.log(2 * math.pi))
        raise ValueError(f"Unknown lookahead head {head!r}; choose one of {list(ENTROPY_HEADS)}.")


class LookaheadObjective(nn.Module):
    """Training loss of a :class:`LookaheadNetwork` against a frozen PM-VAE.

    Per batch: draw an acquisition state inside each row's present entries (the number
    observed uniform within ``observed_fraction``), ``n_completions`` completions, and
    ``n_actions_per_step`` random actions shared by the batch; then fit both heads to the
    one-step-ahead posteriors of those actions (plus "nothing").

    Only ``network`` is a registered submodule: the base model is kept out of the optimiser
    and out of ``train()``, so dropout in it stays off.
    """

    def __init__(
        self,
        network: LookaheadNetwork,
        base: nn.Module,
        problem: AcquisitionProblem,
        n_completions: int,
        n_actions_per_step: int,
        observed_fraction: tuple[float, float],
    ) -> None:
        super().__init__()
        self.network = network
        self._base = (base,)  # a tuple hides the module from parameters() and train()
        self.problem = problem
        self.n_completions = n_completions
        self.n_actions_per_step = min(n_actions_per_step, problem.n_actions)
        self.observed_fraction = observed_fraction

    def _acquisition_state(self, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n_rows, n_features = present.shape
        low, high = self.observed_fraction
        fraction = low + (high - low) * torch.rand(
            n_rows, 1, generator=generator, device=present.device
        )
        ranks = (
            torch.rand(present.shape, generator=generator, device=present.device)
            .argsort(1)
            .argsort(1)
        )
        state = present & (ranks < torch.floor(fraction * (n_features + 1)))
        if self.problem.target is not None:
            state = state & ~self.problem.target
        return state

    def loss(
        self,
        x: torch.Tensor,
        present: torch.Tensor,
        generator: torch.Generator,
        kl_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch's valid (row, scenario, action) cells, and its terms.

        ``kl_weight`` is part of the training loop's protocol and has no role here.
        """
        base = self._base[0]
        device = x.device
        state = self._acquisition_state(present, generator)
        chosen = torch.randperm(self.problem.n_actions, generator=generator, device=device)
        chosen = chosen[: self.n_actions_per_step]
        actions = self.problem.with_nothing(self.problem.actions[chosen])
        noise_dim = base.partial_posterior.noise_dim
        shape = (self.n_completions, self.problem.n_scenarios, actions.shape[0], x.shape[0])
        with torch.no_grad():
            targets, draws = one_step_entropies(
                base,
                x,
                state,
                actions,
                self.problem,
                torch.randn(
                    self.n_completions, x.shape[0], noise_dim, generator=generator, device=device
                ),
                torch.randn(shape + (noise_dim,), generator=generator, device=device),
            )
        columns = torch.cat([chosen.new_zeros(1), chosen + 1])
        loc, scale, entropies = (t[:, :, columns] for t in self.network(x, state))
        gaussian = torch.distributions.Normal(loc.permute(1, 2, 0, 3), scale.permute(1, 2, 0, 3))
        nll = -gaussian.log_prob(draws).sum(-1).mean(0)  # (S, A', n)
        squared_error = (entropies.permute(1, 2, 0) - targets).square().mean(0)
        available = torch.cat(
            [torch.ones_like(state[:, :1]), self.problem.available(state)[:, chosen]], dim=1
        )  # (n, A'): "nothing" is always a valid cell
        weights = available.T.unsqueeze(0).expand_as(nll).to(nll.dtype)
        total = weights.sum()
        mixture_loss = (nll * weights).sum() / total
        entropy_loss = (squared_error * weights).sum() / total
        terms = {
            "mixture_nll": float(mixture_loss.detach()),
            "entropy_mse": float(entropy_loss.detach()),
        }
        return mixture_loss + entropy_loss, terms
