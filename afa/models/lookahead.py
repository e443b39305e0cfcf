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

The ``"variance"`` criterion asks instead how much of the imputation's expected squared
error acquiring ``x_a`` removes. With ``C`` the predictive covariance of ``x`` given
``x_o`` (:func:`predictive_covariance`) and ``T`` the columns that matter (every
unobserved one, or the target), the best linear update after observing ``x_a`` removes

    G_a = Σ_{j ∈ T} C_{j a} C_{a a}^{-1} C_{a j}

of the current error ``tr C_TT`` (exactly so for a Gaussian predictive, and for a 0/1
feature whatever the predictive); :func:`variance_shares` returns ``G_a / tr C_TT``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal

from afa.nn import ResidualMLP, masked_input

__all__ = [
    "CRITERIA",
    "ENTROPY_HEADS",
    "AcquisitionProblem",
    "LookaheadNetwork",
    "LookaheadObjective",
    "information_gains",
    "one_step_entropies",
    "predictive_covariance",
    "variance_shares",
]

CRITERIA = ("entropy", "variance")
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
        Actions that would reveal a target column are never available.
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
        """(n, A): True where the action would reveal at least one unobserved column.

        An action that would reveal the target is never available.
        """
        available = self.count_columns(~state) > 0
        if self.target is None:
            return available
        return available & ~(self.actions & self.target).any(-1)

    @cached_property
    def one_column_each(self) -> bool:
        """True when action ``a`` reveals column ``a`` alone (no groups)."""
        n_actions, n_features = self.actions.shape
        identity = torch.eye(n_features, dtype=torch.bool, device=self.actions.device)
        return n_actions == n_features and torch.equal(self.actions, identity)

    def count_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """(n, A): how many of each action's columns are True in ``columns`` (n, d), float.

        Without groups that is ``columns`` itself; with groups, one product (an (n, A, d)
        boolean intermediate cost 17x more at 256 features).
        """
        if self.one_column_each:
            return columns.to(torch.float32)
        return columns.to(torch.float32) @ self.actions.T.to(torch.float32)

    def error_columns(self, state: torch.Tensor) -> torch.Tensor:
        """(n, d): the columns whose error the ``"variance"`` criterion counts."""
        if self.target is None:
            return ~state
        return self.target.expand_as(state)


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


def predictive_covariance(
    base: nn.Module, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``Cov[x | x_o]`` under the model, from draws ``z_k ~ q(z | x_o)``: shape ``(n, d, d)``.

    The covariance of the conditional means ``E[x | x_o, z_k]`` across draws plus the mean
    of ``Cov[x | x_o, z_k]`` (the law of total covariance). Rows and columns of observed
    entries are zero. ``noise`` has shape ``(K, 1 or n, noise_dim)``.
    """
    z = base.partial_posterior(x, state).from_noise(noise)
    output = base.decoder(z)
    means = base.likelihood.conditional_mean(x, output, state)
    centred = means - means.mean(0)
    between = torch.einsum("kni,knj->nij", centred, centred) / noise.shape[0]
    return between + base.likelihood.mean_conditional_covariance(x, output, state)


def variance_shares(
    covariance: torch.Tensor, actions: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """Share of the expected squared error over ``columns`` that each action removes.

    Parameters
    ----------
    covariance : Tensor of shape (n, d, d)
        Predictive covariance, zero in observed rows and columns.
    actions : bool Tensor of shape (A, d)
    columns : bool Tensor of shape (n, d)
        The columns whose error counts.

    Returns
    -------
    Tensor of shape (n, A)
        ``Σ_{j ∈ T} C_{jG} C_{GG}^{-1} C_{Gj} / tr C_TT`` for the columns ``G`` of each
        action, in ``[0, 1]``; 0 where nothing in ``columns`` is uncertain.
    """
    d = covariance.shape[-1]
    variance = covariance.diagonal(dim1=-2, dim2=-1)
    weights = columns.to(covariance.dtype)
    total = (variance * weights).sum(-1, keepdim=True)
    jitter = 1e-6 * variance.mean(-1, keepdim=True) + 1e-12
    # a column already known has no variance and no covariance: a unit diagonal keeps C_GG
    # invertible and it adds nothing to the gain
    diagonal = torch.where(variance > 0, variance + jitter, 1.0)
    sizes = actions.sum(-1)
    if int(sizes.max()) == 1:  # single columns: C_aa is a scalar
        explained = (covariance.square() @ weights.unsqueeze(-1)).squeeze(-1) / diagonal
        explained = explained[:, actions.to(torch.long).argmax(-1)]
    else:  # groups padded to a common size with column d, of unit variance
        order = torch.argsort(~actions, dim=-1, stable=True)[:, : int(sizes.max())]
        padding = torch.arange(order.shape[1], device=order.device) < sizes[:, None]
        index = torch.where(padding, order, d)
        padded = nn.functional.pad(covariance, (0, 1, 0, 1))
        diagonal = nn.functional.pad(diagonal, (0, 1), value=1.0)
        across = padded[:, index] * nn.functional.pad(weights, (0, 1))[:, None, None, :]
        within = padded[:, index.unsqueeze(-1), index.unsqueeze(-2)]  # (n, A, g, g)
        within = within - torch.diag_embed(within.diagonal(dim1=-2, dim2=-1))
        within = within + torch.diag_embed(diagonal[:, index])
        # Σ_t a_tᵀ W⁻¹ a_t = tr(W⁻¹ A Aᵀ): solving against the g x g Gram matrix instead of
        # the d + 1 columns of A is about 400x faster for small groups on CPU
        gram = across @ across.transpose(-1, -2)
        explained = torch.linalg.solve(within, gram).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.where(total > 0, explained / total.clamp_min(1e-30), 0.0).clamp(0.0, 1.0)


def information_gains(entropies: torch.Tensor) -> torch.Tensor:
    """Gains ``(n, A)`` from expected entropies ``(n, S, A + 1)`` (action 0 is "nothing")."""
    gains = entropies[:, 0, :1] - entropies[:, 0, 1:]
    if entropies.shape[1] == 2:
        gains = gains - (entropies[:, 1, :1] - entropies[:, 1, 1:])
    return gains


class LookaheadNetwork(nn.Module):
    """Predicts the posterior after every action, from ``concat(x * b, b)``, in one pass.

    Three heads share a residual trunk; the two entropy heads cover every scenario and the
    ``A + 1`` actions, the variance head the ``A`` actions:

    - ``"mixture"``: a diagonal Gaussian ``g_a(z | x_o)``, fitted by maximum likelihood to
      draws from the one-step-ahead posteriors (the reference code's lookahead posterior: a
      moment match of the mixture over ``x_a``); its entropy stands in for the expected one;
    - ``"entropy"``: the expected entropy ``E_{x_a} H[q(z | x_o, x_a)]`` itself, regressed
      on one-completion estimates;
    - ``"variance"``: each action's share of the expected squared error removed
      (:func:`variance_shares`), regressed on the sampling estimate (scaled by the number
      of columns counted, see :meth:`relative_gains`).

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
        self.shares = nn.Linear(width, n_actions)

    def _hidden(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.trunk(masked_input(x, state)))

    def relative_gains(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The ``"variance"`` head, ``(n, A)``: each action's share of the error removed
        times the number of columns counted, so that values are of order one whatever ``d``.
        """
        return nn.functional.softplus(self.shares(self._hidden(x, state)))

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gaussian means and scales ``(n, S, A + 1, L)``; entropies ``(n, S, A + 1)``."""
        hidden = self._hidden(x, state)
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
    observed uniform within ``observed_fraction``). For ``criterion="entropy"``, draw
    ``n_completions`` completions and ``n_actions_per_step`` random actions shared by the
    batch, and fit the two entropy heads to the one-step-ahead posteriors of those actions
    (plus "nothing"). For ``criterion="variance"``, fit the variance head to the sampling
    estimate of every action's share (:func:`variance_shares`) from ``n_completions`` draws;
    in training, half of each batch's states are instead points on the network's own greedy
    paths (the largest gain per unit of ``costs``, one per action, default 1), the states
    acquisition will put it in.

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
        criterion: str = "entropy",
        costs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"Unknown criterion {criterion!r}; choose one of {list(CRITERIA)}.")
        self.criterion = criterion
        self.network = network
        self._base = (base,)  # a tuple hides the module from parameters() and train()
        self.problem = problem
        self.n_completions = n_completions
        self.n_actions_per_step = min(n_actions_per_step, problem.n_actions)
        self.observed_fraction = observed_fraction
        self.costs = torch.ones(problem.n_actions) if costs is None else costs
        self._targets: tuple[torch.Tensor, ...] | None = None

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
        state = self._acquisition_state(present, generator)
        if self.training and self.criterion == "variance":
            half = x.shape[0] // 2
            state[:half] = self._own_path_states(x[:half], present[:half], generator)
        if self.criterion == "variance":
            targets = self._variance_targets(x, state, generator)
        else:
            targets = self._entropy_targets(x, state, generator)
        self._targets = targets if self.training else None  # validation is not replayed
        return self._fit(*targets)

    @torch.no_grad()
    def _own_path_states(
        self, x: torch.Tensor, present: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """States on the network's own greedy paths from nothing, a uniform number of steps
        within ``observed_fraction`` of the actions along.

        Acquisition visits these states, not random ones (the chosen pixels cluster where
        the gains are), so the variance head trains on them for half of each batch. Each
        step takes the largest gain per unit cost, the cheapest among equals, as acquisition
        does with the same costs (a budget is not known here).
        """
        low, high = self.observed_fraction
        n_actions = self.problem.n_actions
        least = math.ceil(low * n_actions - 1e-9)
        greatest = max(least, math.floor(high * n_actions + 1e-9))
        lengths = torch.randint(
            least, greatest + 1, (x.shape[0],), generator=generator, device=x.device
        )
        possible = self.problem.count_columns(~present) == 0  # the row has all its columns
        costs = self.costs.to(x.device)

        state = torch.zeros_like(present)
        was_training = self.network.training
        self.network.eval()
        for step in range(int(lengths.max()) if len(lengths) else 0):
            available = self.problem.available(state) & possible
            gains = self.network.relative_gains(x, state)  # positive
            scores = (gains / costs).masked_fill(~available, -math.inf)
            best = scores == scores.amax(-1, keepdim=True)
            choice = torch.where(best, costs, math.inf).argmin(-1)
            move = (step < lengths) & available.any(-1)
            state = state | (move.unsqueeze(-1) & self.problem.actions[choice])
        self.network.train(was_training)
        return state

    def replay(self) -> torch.Tensor:
        """The last training batch's loss under the network as it is now.

        The targets (posterior draws through the frozen model) cost far more than a pass of
        the network, so the training loop takes several steps on each batch's targets.
        """
        if self._targets is None:
            raise RuntimeError("replay() needs a training batch: call loss() in train mode.")
        return self._fit(*self._targets)[0]

    def _fit(self, *targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.criterion == "variance":
            return self._variance_fit(*targets)
        return self._entropy_fit(*targets)

    def _variance_targets(
        self, x: torch.Tensor, state: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        base = self._base[0]
        noise_dim = base.partial_posterior.noise_dim
        noise = torch.randn(
            self.n_completions, x.shape[0], noise_dim, generator=generator, device=x.device
        )
        columns = self.problem.error_columns(state)
        with torch.no_grad():
            covariance = predictive_covariance(base, x, state, noise)
            shares = variance_shares(covariance, self.problem.actions, columns)
            targets = shares * columns.sum(-1, keepdim=True)
        return x, state, targets

    def _variance_fit(
        self, x: torch.Tensor, state: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        squared_error = (self.network.relative_gains(x, state) - targets).square()
        available = self.problem.available(state).to(squared_error.dtype)
        loss = (squared_error * available).sum() / available.sum().clamp_min(1.0)
        return loss, {"variance_mse": float(loss.detach())}

    def _entropy_targets(
        self, x: torch.Tensor, state: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        base = self._base[0]
        device = x.device
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
        return x, state, chosen, targets, draws

    def _entropy_fit(
        self,
        x: torch.Tensor,
        state: torch.Tensor,
        chosen: torch.Tensor,
        targets: torch.Tensor,
        draws: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
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
