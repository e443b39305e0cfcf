"""Batched minimisation of independent per-query losses: L-BFGS and Adam."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Objective", "OptimisationResult", "minimize_adam", "minimize_lbfgs"]

_MAX_LINE_SEARCH_EVALUATIONS = 20


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(params (A, P), query index (A,)) -> loss (A,)``: independent losses per query."""


@dataclass
class OptimisationResult:
    """Per-query outcome of a batched minimisation.

    Attributes
    ----------
    params : Tensor of shape (Q, P)
    loss : Tensor of shape (Q,)
        The loss at ``params``.
    n_iter : Tensor of shape (Q,)
        Iterations each query ran.
    converged : bool Tensor of shape (Q,)
        Whether the query met the tolerance before ``max_iter``.
    """

    params: torch.Tensor
    loss: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


def _value_and_grad(
    objective: Objective, params: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        leaf = params.detach().requires_grad_(True)
        value = objective(leaf, index)
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    value = value.detach()
    finite = torch.isfinite(value) & torch.isfinite(grad).all(-1)
    return torch.where(finite, value, torch.full_like(value, math.inf)), grad


def _two_loop(
    grad: torch.Tensor,
    steps: torch.Tensor,
    changes: torch.Tensor,
    rho: torch.Tensor,
    newest: torch.Tensor,
) -> torch.Tensor:
    """``-H g`` by the L-BFGS two-loop recursion, per query.

    ``steps`` and ``changes`` are ``(m, A, P)`` ring buffers whose newest slot is
    ``newest[a]`` for query ``a``; ``rho = 0`` marks unused pairs.
    """
    m = steps.shape[0]
    queries = torch.arange(grad.shape[0], device=grad.device)
    order = [(newest - i) % m for i in range(m)]  # newest first, per query
    pairs = [(steps[slot, queries], changes[slot, queries], rho[slot, queries]) for slot in order]
    q = grad.clone()
    alphas = []
    for s, y, r in pairs:
        alphas.append(r * (s * q).sum(-1))
        q = q - alphas[-1].unsqueeze(-1) * y
    # scale H0 by s'y / y'y of each query's most recent usable pair (1 / |g| when none)
    gamma = 1.0 / grad.norm(dim=-1).clamp_min(1.0)
    for s, y, r in reversed(pairs):
        gamma = torch.where(r > 0, (s * y).sum(-1) / (y * y).sum(-1).clamp_min(1e-30), gamma)
    result = gamma.unsqueeze(-1) * q
    for (s, y, r), alpha in zip(reversed(pairs), reversed(alphas), strict=True):
        beta = r * (y * result).sum(-1)
        result = result + (alpha - beta).unsqueeze(-1) * s
    return -result


@dataclass
class _LineSearch:
    """Per-query strong-Wolfe searches (bracketing, then bisection), one trial per round.

    Every query is at its own stage of its own search, so a batch evaluates each query's next
    trial point together instead of waiting for the slowest search of every iteration.
    """

    direction: torch.Tensor
    slope0: torch.Tensor
    step: torch.Tensor
    low: torch.Tensor
    low_value: torch.Tensor
    low_grad: torch.Tensor
    high: torch.Tensor
    evaluations: torch.Tensor

    c1 = 1e-4
    c2 = 0.9

    @classmethod
    def empty(cls, params: torch.Tensor) -> _LineSearch:
        n = params.shape[0]
        zeros = params.new_zeros(n)
        return cls(
            torch.zeros_like(params),
            zeros,
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            torch.zeros_like(params),
            zeros.clone(),
            torch.zeros(n, dtype=torch.long, device=params.device),
        )

    def start(
        self, rows: torch.Tensor, direction: torch.Tensor, value: torch.Tensor, grad: torch.Tensor
    ) -> None:
        """Begin a search from ``(value, grad)`` along ``direction`` for the queries ``rows``."""
        self.direction[rows] = direction
        self.slope0[rows] = (grad * direction).sum(-1)
        self.step[rows] = 1.0
        self.low[rows] = 0.0
        self.low_value[rows] = value
        self.low_grad[rows] = grad
        self.high[rows] = math.inf
        self.evaluations[rows] = 0

    def trial(self, params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return params[rows] + self.step[rows, None] * self.direction[rows]

    def record(
        self, rows: torch.Tensor, value0: torch.Tensor, f: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """Take the trial's value and gradient; True where the query's search has ended."""
        step, low, high = self.step[rows], self.low[rows], self.high[rows]
        slope0 = self.slope0[rows]
        slope = (g * self.direction[rows]).sum(-1)
        sufficient = (f <= value0 + self.c1 * step * slope0) & (f < self.low_value[rows])
        curvature = slope.abs() <= -self.c2 * slope0
        accept = sufficient & curvature
        move_low = sufficient & ~curvature
        # past a minimum (rising slope): the old low point closes the bracket from the other side
        flip = move_low & (slope * (high - low).nan_to_num(posinf=1.0) >= 0)
        high = torch.where(~sufficient, step, torch.where(flip, low, high))
        take = accept | move_low
        low = torch.where(take, step, low)
        self.low_value[rows] = torch.where(take, f, self.low_value[rows])
        self.low_grad[rows] = torch.where(take.unsqueeze(-1), g, self.low_grad[rows])
        self.low[rows], self.high[rows] = low, high
        self.step[rows] = torch.where(torch.isfinite(high), 0.5 * (low + high), 2.0 * step)
        self.evaluations[rows] += 1
        return accept | (self.evaluations[rows] >= _MAX_LINE_SEARCH_EVALUATIONS)


class _HeldOutStopping:
    """Per-query early stopping on held-out draws, keeping each query's best point.

    A fixed noise batch can be overfitted: a flexible map keeps raising the C-ELBO on its
    own batch while the true bound falls. The held-out objective returns per-draw losses
    ``(N, A)`` on another batch; a point replaces a query's best only when the paired mean
    improvement is significant, more than ``z_score`` standard errors, so that noise in the
    held-out estimate is not mistaken for progress.
    """

    z_score = 2.0

    def __init__(self, validation: Objective, params: torch.Tensor, patience: int):
        self.validation, self.patience = validation, patience
        self.best = self._values(params, torch.arange(params.shape[0], device=params.device))
        self.best_params = params.clone()
        self.stale = torch.zeros(params.shape[0], dtype=torch.long, device=params.device)

    def _values(self, params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.validation(params, index)

    def update(self, params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Record the queries ``rows`` at ``params``; True where a query should stop."""
        values = self._values(params, rows)
        gain = self.best[:, rows] - values
        standard_error = gain.std(0) / math.sqrt(gain.shape[0])
        significant = gain.mean(0) > self.z_score * standard_error
        improved = torch.isfinite(values).all(0)
        improved &= significant | ~torch.isfinite(self.best[:, rows]).all(0)
        self.best[:, rows] = torch.where(improved, values, self.best[:, rows])
        self.best_params[rows] = torch.where(improved.unsqueeze(-1), params, self.best_params[rows])
        self.stale[rows] = torch.where(improved, 0, self.stale[rows] + 1)
        return self.stale[rows] >= self.patience


def minimize_lbfgs(
    objective: Objective,
    params: torch.Tensor,
    max_iter: int = 500,
    tol: float = 1e-5,
    history_size: int = 10,
    validation: Objective | None = None,
    check_every: int = 10,
    patience: int = 5,
) -> OptimisationResult:
    """Minimise independent per-query losses by L-BFGS with a strong-Wolfe line search.

    Every query keeps its own curvature pairs, line search and stopping test, so each
    query's path is the one it would follow alone. The queries do not move in lockstep:
    each round evaluates every active query's next trial point, wherever its own line
    search stands, so a batch costs as many rounds as its longest query needs evaluations,
    not the sum over iterations of the slowest line search; converged queries leave.

    Parameters
    ----------
    objective : callable
        ``(params (A, P), index (A,)) -> (A,)``: the losses of the queries in ``index``.
    params : Tensor of shape (Q, P)
        Starting point.
    max_iter : int, default=500
    tol : float, default=1e-5
        A query converges when an iteration lowers its loss by less than ``tol`` relative to
        ``max(1, |loss|)``, when its gradient is below ``tol`` everywhere, or when the line
        search finds no decrease.
    history_size : int, default=10
    validation : callable, optional
        ``(params (A, P), index (A,)) -> (N, A)``: per-draw held-out losses. When given, it
        is evaluated every ``check_every`` iterations; a query stops once it has not improved
        significantly for ``patience`` checks, and each query's returned parameters are its
        best on it.
    check_every, patience : int, default=10, 5

    Returns
    -------
    OptimisationResult
    """
    n_queries = params.shape[0]
    everyone = torch.arange(n_queries, device=params.device)
    params = params.detach().clone()
    value, grad = _value_and_grad(objective, params, everyone)
    steps = params.new_zeros((history_size, *params.shape))
    changes = torch.zeros_like(steps)
    rho = params.new_zeros(history_size, n_queries)
    n_iter = torch.zeros(n_queries, dtype=torch.long, device=params.device)
    active = torch.isfinite(value) & (grad.abs().amax(-1) > tol) & (max_iter > 0)
    converged = ~active & torch.isfinite(value) & (grad.abs().amax(-1) <= tol)
    held_out = None if validation is None else _HeldOutStopping(validation, params, patience)
    search = _LineSearch.empty(params)
    _next_direction(
        search, torch.nonzero(active).squeeze(-1), value, grad, steps, changes, rho, n_iter
    )
    while bool(active.any()):
        rows = torch.nonzero(active).squeeze(-1)
        f, g = _value_and_grad(objective, search.trial(params, rows), rows)
        ended = search.record(rows, value[rows], f, g)
        rows = rows[ended]
        if rows.numel() == 0:
            continue
        # an L-BFGS iteration ends for these queries: move, store the pair, test convergence
        moved = search.low[rows] > 0
        s = search.low[rows, None] * search.direction[rows]
        new_value, new_grad = search.low_value[rows], search.low_grad[rows]
        y = new_grad - grad[rows]
        sy = (s * y).sum(-1)
        slot = n_iter[rows] % history_size
        steps[slot, rows], changes[slot, rows] = s, y
        rho[slot, rows] = torch.where(sy > 1e-10, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        small_change = (value[rows] - new_value) <= tol * new_value.abs().clamp_min(1.0)
        params[rows] += s
        value[rows], grad[rows] = new_value, new_grad
        n_iter[rows] += 1
        # a flow starts as the identity, where the first steps can be tiny: with held-out
        # checks, slow progress counts as convergence only after the first check
        stalled = small_change & ((held_out is None) | (n_iter[rows] >= check_every))
        done = ~moved | stalled | (new_grad.abs().amax(-1) <= tol)
        if held_out is not None:
            due = n_iter[rows] % check_every == 0
            if bool(due.any()):
                done[due] |= held_out.update(params[rows[due]], rows[due])
        converged[rows] = done
        active[rows] = ~done & (n_iter[rows] < max_iter)
        _next_direction(search, rows[active[rows]], value, grad, steps, changes, rho, n_iter)
    if held_out is None:
        return OptimisationResult(params, value, n_iter, converged)
    held_out.update(params, everyone)
    value = _value_and_grad(objective, held_out.best_params, everyone)[0]
    return OptimisationResult(held_out.best_params, value, n_iter, converged)


def _next_direction(
    search: _LineSearch,
    rows: torch.Tensor,
    value: torch.Tensor,
    grad: torch.Tensor,
    steps: torch.Tensor,
    changes: torch.Tensor,
    rho: torch.Tensor,
    n_iter: torch.Tensor,
) -> None:
    """Start the next line search of the queries ``rows`` along their L-BFGS direction."""
    if rows.numel() == 0:
        return
    history = steps.shape[0]
    newest = (n_iter[rows] - 1) % history
    direction = _two_loop(grad[rows], steps[:, rows], changes[:, rows], rho[:, rows], newest)
    descent = (direction * grad[rows]).sum(-1) < 0
    fallback = -grad[rows] / grad[rows].norm(dim=-1, keepdim=True).clamp_min(1.0)
    direction = torch.where(descent.unsqueeze(-1), direction, fallback)
    # a non-descent direction means the stored pairs mislead: forget them
    rho[:, rows] = torch.where(descent, rho[:, rows], torch.zeros_like(rho[:, rows]))
    search.start(rows, direction, value[rows], grad[rows])


def minimize_adam(
    objective: Objective,
    params: torch.Tensor,
    max_iter: int = 2000,
    tol: float = 1e-5,
    learning_rate: float = 1e-2,
    check_every: int = 50,
) -> OptimisationResult:
    """Minimise independent per-query losses with Adam (which is element-wise, so per query).

    Every ``check_every`` iterations a query whose best loss improved by less than ``tol``
    relative to ``max(1, |loss|)`` since the last check stops and keeps its best parameters.
    A query that stops while its current loss or gradient is not finite (stuck against a
    region where the objective is undefined) is not reported as converged.

    Returns
    -------
    OptimisationResult
    """
    n_queries = params.shape[0]
    everyone = torch.arange(n_queries, device=params.device)
    current = params.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([current], lr=learning_rate)
    best_params = params.detach().clone()
    best = torch.full((n_queries,), math.inf, device=params.device)
    checkpoint = best.clone()
    active = torch.ones(n_queries, dtype=torch.bool, device=params.device)
    n_iter = torch.zeros(n_queries, dtype=torch.long, device=params.device)
    finite_now = torch.ones(n_queries, dtype=torch.bool, device=params.device)
    for iteration in range(1, max_iter + 1):
        frozen = current.detach().clone()
        value, grad = _value_and_grad(objective, current.detach(), everyone)
        finite_now = torch.where(active, torch.isfinite(value), finite_now)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        improved = active & (value < best)
        best = torch.where(improved, value, best)
        best_params[improved] = frozen[improved]
        current.grad = torch.where(active.unsqueeze(-1), grad, torch.zeros_like(grad))
        optimiser.step()
        with torch.no_grad():
            current.copy_(torch.where(active.unsqueeze(-1), current, frozen))
        n_iter += active.long()
        if iteration % check_every == 0:
            stalled = (checkpoint - best) <= tol * best.abs().clamp_min(1.0)
            active &= ~stalled
            checkpoint = best.clone()
            if not bool(active.any()):
                break
    loss = _value_and_grad(objective, best_params, everyone)[0]
    converged = ~active & torch.isfinite(loss) & finite_now
    return OptimisationResult(best_params, loss, n_iter, converged)
