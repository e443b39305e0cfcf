"""Conditional prior families ``z = f(ε)`` and their batched fit by the conditional ELBO."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from afa.conditional._evidence import Evidence, on_points, standard_normal_log_prob
from afa.conditional._optimise import OptimisationResult, minimize_adam, minimize_lbfgs

__all__ = [
    "FAMILIES",
    "MAX_FCN_LATENT",
    "AffineFamily",
    "MLPFamily",
    "PlanarFamily",
    "conditional_elbo",
    "conditional_elbo_terms",
    "fit_conditional_prior",
    "quasi_random_noise",
    "starting_means",
    "whitened_noise",
]

MAX_FCN_LATENT = 16  # the MLP family factorises an L x L Jacobian per noise draw and query
_FIT_ELEMENTS_PER_CHUNK = 2**24  # decoder outputs held at once while fitting
START_CANDIDATES = 1024  # prior draws searched for each query's starting mean
START_SCALE = 0.5  # the affine map's starting standard deviation around that mean


class AffineFamily:
    """``z = μ + T ε`` with ``T`` lower triangular and ``diag(T) = exp(s)`` (``"gvi"``).

    Any full matrix ``W`` gives the same Gaussian ``N(μ, W Wᵀ)`` as the Cholesky factor of
    ``W Wᵀ``, so this is the full-covariance family. Its log-determinant is ``Σ s``: a sum of
    free parameters that cannot become NaN, unlike ``log|det W|`` of a general matrix.
    """

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim
        self._rows, self._cols = torch.tril_indices(latent_dim, latent_dim)
        self._on_diagonal = self._rows == self._cols  # of the packed lower triangle
        self.affine_parameters = latent_dim + len(self._rows)
        self.n_parameters = self.affine_parameters

    def initial(self, n_queries: int, generator: torch.Generator) -> torch.Tensor:
        """The standard normal: ``μ = 0``, ``T = I`` (every query starts alike)."""
        return torch.zeros(n_queries, self.n_parameters)

    def centred(self, loc: torch.Tensor, scale: float) -> torch.Tensor:
        """The parameters of ``N(loc, scale² I)`` for each row of ``loc``: ``(Q, P)``."""
        params = loc.new_zeros(loc.shape[0], self.n_parameters)
        params[:, : self.latent_dim] = loc
        params[:, self.latent_dim :][:, self._on_diagonal.to(loc.device)] = math.log(scale)
        return params

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = self.latent_dim
        loc, packed = params[:, :L], params[:, L : self.affine_parameters]
        on_diagonal = self._on_diagonal.to(params.device)
        entries = torch.where(on_diagonal, packed.exp(), packed)
        tril = params.new_zeros(params.shape[0], L, L)
        tril[:, self._rows, self._cols] = entries
        log_det = torch.where(on_diagonal, packed, torch.zeros_like(packed)).sum(-1)
        return loc, tril, log_det

    def transform(
        self, params: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det ∂z/∂ε|)`` of shapes ``(N, Q, L)`` and ``(N, Q)`` for noise ``(N, L)``
        shared by the queries, or ``(N, Q, L)``, each query's own."""
        loc, tril, log_det = self._split(params)
        z = loc + _per_query(tril, noise)
        return z, log_det.expand(noise.shape[0], -1)


def _per_query(matrices: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``matrices[q] @ noise`` for every draw and query: ``(N, Q, ·)`` from matrices
    ``(Q, ·, L)`` and noise ``(N, L)`` (shared) or ``(N, Q, L)`` (per query)."""
    if noise.dim() == 2:
        return torch.einsum("qij,nj->nqi", matrices, noise)
    return torch.einsum("qij,nqj->nqi", matrices, noise)


class PlanarFamily(AffineFamily):
    """The affine map followed by ``n_layers`` planar layers (``"planar"``).

    Layer ``k`` maps ``z ↦ z + û tanh(wᵀz + b)``. The invertibility fix ``û = u + (m(wᵀu) -
    wᵀu) w / |w|²`` with ``m(a) = -1 + softplus(a)`` keeps ``wᵀû > -1``, so every layer is
    invertible and its log-determinant ``log(1 + tanh'(·) wᵀû)`` is finite. With ``û = 0``
    (the start) the layers are the identity, so the family contains ``"gvi"``.
    """

    def __init__(self, latent_dim: int, n_layers: int) -> None:
        super().__init__(latent_dim)
        self.n_layers = n_layers
        self.n_parameters += n_layers * (2 * latent_dim + 1)

    def initial(self, n_queries: int, generator: torch.Generator) -> torch.Tensor:
        """Identity layers (``û = 0``, ``b = 0``) with random directions ``w``.

        ``û = 0`` needs ``u = c w`` with ``softplus(c |w|²) = 1``, as the fix maps
        ``u = 0`` to a non-zero ``û``.
        """
        L = self.latent_dim
        w = torch.randn(self.n_layers, L, generator=generator) / math.sqrt(L)
        u = math.log(math.e - 1) * w / w.square().sum(-1, keepdim=True)
        layers = torch.cat([u, w, torch.zeros(self.n_layers, 1)], 1)
        start = torch.cat([torch.zeros(self.affine_parameters), layers.reshape(-1)])
        return start.expand(n_queries, -1).clone()

    def transform(
        self, params: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det ∂z/∂ε|)`` of shapes ``(N, Q, L)`` and ``(N, Q)`` for noise ``(N, L)``
        or ``(N, Q, L)`` (as :meth:`AffineFamily.transform`)."""
        z, log_det = super().transform(params, noise)
        L = self.latent_dim
        layers = params[:, self.affine_parameters :].reshape(-1, self.n_layers, 2 * L + 1)
        u, w, b = layers[..., :L], layers[..., L : 2 * L], layers[..., 2 * L]
        wu = (w * u).sum(-1, keepdim=True)
        squared_norm = w.square().sum(-1, keepdim=True).clamp_min(1e-12)
        softplus = nn.functional.softplus(wu)
        u_hat = u + (softplus - 1 - wu) * w / squared_norm
        # one contiguous (Q, L) block per layer: broadcasting a strided slice is far slower
        w_layers, u_layers = w.transpose(0, 1).contiguous(), u_hat.transpose(0, 1).contiguous()
        b_layers = b.T.contiguous()
        activations = []
        for k in range(self.n_layers):
            activation = torch.tanh((z * w_layers[k]).sum(-1) + b_layers[k])
            z = torch.addcmul(z, u_layers[k], activation.unsqueeze(-1))
            activations.append(activation)
        # 1 + tanh'(a) wᵀû with wᵀû = softplus(wᵀu) - 1 is t² + (1 - t²) softplus(wᵀu): a
        # sum of two non-negative terms, so its logarithm is accurate however close to 0
        squared = torch.stack(activations, -1).square()
        derivative = squared + (1 - squared) * softplus.squeeze(-1)
        return z, log_det + torch.log(derivative).sum(-1)


class MLPFamily(AffineFamily):
    """The affine map plus a one-hidden-layer tanh MLP of the noise (``"fcn"``).

    ``z = μ + T ε + V tanh(A ε + c)``. The log-determinant is that of the explicit Jacobian
    ``T + V diag(tanh') A``, factorised by LU for every noise draw; a singular Jacobian gives
    ``-inf`` (an infinite loss the line search rejects), never a silent NaN. The cost grows as
    ``L³`` per draw, so latents above :data:`MAX_FCN_LATENT` are refused.
    """

    def __init__(self, latent_dim: int, n_hidden: int = 64) -> None:
        if latent_dim > MAX_FCN_LATENT:
            raise ValueError(
                f"inference='fcn' computes an L x L Jacobian per draw and supports latents of at "
                f"most {MAX_FCN_LATENT} dimensions; this VAE has {latent_dim}. Use 'planar'."
            )
        super().__init__(latent_dim)
        self.n_hidden = n_hidden
        self.n_parameters += n_hidden * (2 * latent_dim + 1)

    def initial(self, n_queries: int, generator: torch.Generator) -> torch.Tensor:
        """``V = 0`` (the MLP adds nothing at the start) and random ``A``."""
        L, H = self.latent_dim, self.n_hidden
        hidden = torch.randn(H, L, generator=generator) / math.sqrt(L)
        mlp = torch.cat([hidden.reshape(-1), torch.zeros(H), torch.zeros(L * H)])
        start = torch.cat([torch.zeros(self.affine_parameters), mlp])
        return start.expand(n_queries, -1).clone()

    def transform(
        self, params: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det ∂z/∂ε|)`` of shapes ``(N, Q, L)`` and ``(N, Q)`` for noise ``(N, L)``
        or ``(N, Q, L)`` (as :meth:`AffineFamily.transform`)."""
        L, H = self.latent_dim, self.n_hidden
        loc, tril, _ = self._split(params)
        mlp = params[:, self.affine_parameters :]
        hidden = mlp[:, : H * L].reshape(-1, H, L)
        bias = mlp[:, H * L : H * L + H]
        out = mlp[:, H * L + H :].reshape(-1, L, H)
        activation = torch.tanh(_per_query(hidden, noise) + bias)
        z = loc + _per_query(tril, noise)
        z = z + torch.einsum("qlh,nqh->nql", out, activation)
        jacobian = tril + torch.einsum("qlh,nqh,qhk->nqlk", out, 1 - activation.square(), hidden)
        return z, torch.linalg.slogdet(jacobian).logabsdet


FAMILIES: dict[str, Callable[..., AffineFamily]] = {
    "gvi": lambda latent_dim, n_layers: AffineFamily(latent_dim),
    "planar": PlanarFamily,
    "fcn": lambda latent_dim, n_layers: MLPFamily(latent_dim),
}


def whitened_noise(n_noise: int, latent_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A fixed batch of ``n_noise`` standard-normal draws with exactly zero mean and identity
    sample covariance (``n_noise > latent_dim``).

    Against a Gaussian target the C-ELBO of an affine map depends on the noise only through
    its first two sample moments, so whitening removes the fixed batch's bias there; for the
    other families it removes the leading term of that bias.
    """
    if n_noise <= latent_dim:
        raise ValueError(
            f"n_noise must exceed the latent dimension ({latent_dim}) to whiten the noise; "
            f"got {n_noise}."
        )
    draws = torch.randn(n_noise, latent_dim, generator=generator, dtype=torch.float64)
    centred = draws - draws.mean(0)
    factor = torch.linalg.cholesky(centred.T @ centred / n_noise)
    return torch.linalg.solve_triangular(factor, centred.T, upper=False).T.float()


def quasi_random_noise(n_draws: int, latent_dim: int, seed: int) -> torch.Tensor:
    """``n_draws`` standard-normal draws from a scrambled Sobol sequence: ``(n_draws, L)``.

    Randomised quasi-Monte Carlo: each draw is marginally ``N(0, I)``, so averages over the
    draws stay unbiased, but together they fill the space far more evenly than independent
    draws. For the smooth functions of ``ε`` that a conditional prior averages (imputations,
    the query likelihood, the C-ELBO), the error of the average shrinks much faster with
    ``n_draws``; balance is best when ``n_draws`` is a power of 2 (on MNIST, 100 draws
    imputed no closer to the many-draw answer than 64, and 128 were 2.5x closer than 100).
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1; got {n_draws}.")
    engine = torch.quasirandom.SobolEngine(latent_dim, scramble=True, seed=operator.index(seed))
    uniform = engine.draw(n_draws, dtype=torch.float64)
    # keep away from 0 and 1, where the inverse normal CDF is infinite
    eps = torch.finfo(torch.float32).eps
    return torch.special.ndtri(uniform.clamp(eps, 1 - eps)).float()


def conditional_elbo(
    family: AffineFamily, params: torch.Tensor, noise: torch.Tensor, evidence: Evidence
) -> torch.Tensor:
    """``E_ε[log p(x_o | z) + log p(z) - log q(z)]`` per query, averaged over ``noise``.

    ``log q(z) = log N(ε; 0, I) - log|det ∂z/∂ε|``, so the value is a lower bound on
    ``log p(x_o)`` in expectation over ``ε``. Returns shape ``(Q,)``.
    """
    return conditional_elbo_terms(family, params, noise, evidence).mean(0)


def conditional_elbo_terms(
    family: AffineFamily, params: torch.Tensor, noise: torch.Tensor, evidence: Evidence
) -> torch.Tensor:
    """The C-ELBO's integrand at every draw: shape ``(N, Q)``."""
    z, log_det = family.transform(params, noise)
    entropy_term = log_det - standard_normal_log_prob(noise).unsqueeze(-1)
    return evidence.log_joint(z) + entropy_term


def fit_conditional_prior(
    family: AffineFamily,
    evidence: Evidence,
    noise: torch.Tensor,
    generator: torch.Generator,
    validation_noise: torch.Tensor | None = None,
    optimizer: str = "lbfgs",
    max_iter: int = 500,
    tol: float = 1e-5,
    learning_rate: float = 1e-2,
) -> OptimisationResult:
    """Maximise every query's C-ELBO over the fixed ``noise`` batch; batched and chunked.

    The affine map starts at each query's :func:`starting_means` with scale
    :data:`START_SCALE`; families richer than the affine map start from the affine map's
    optimum (their extra layers start as the identity), so on the fitting batch they can
    only improve on ``"gvi"``. Queries are solved in chunks that bound the decoder outputs
    held at once.

    With ``validation_noise`` (and L-BFGS), each query stops early once its C-ELBO on that
    batch stops improving, and keeps its best parameters there: the guard against
    overfitting the fixed batch.

    Returns
    -------
    OptimisationResult
        ``loss`` is the negative C-ELBO on ``noise``; ``n_iter`` counts both stages.
    """
    noise = noise.to(evidence.x.device)
    start = family.initial(len(evidence), generator).to(evidence.x.device)
    affine = AffineFamily(family.latent_dim)
    start[:, : affine.n_parameters] = affine.centred(
        starting_means(evidence, generator), START_SCALE
    )
    stages = [affine] if type(family) is AffineFamily else [affine, family]
    if optimizer == "lbfgs":
        minimise = minimize_lbfgs
    else:
        minimise = partial(minimize_adam, learning_rate=learning_rate)
    per_chunk = max(1, _FIT_ELEMENTS_PER_CHUNK // (noise.shape[0] * evidence.x.shape[1]))
    chunks = []
    for rows in torch.arange(len(evidence), device=evidence.x.device).split(per_chunk):
        chunk = evidence.subset(rows)
        params, n_iter = start[rows], torch.zeros_like(rows)
        for stage in stages:
            options = {}
            # the affine map has too few parameters to overfit, and whitening makes its
            # fixed-batch optimum exact for Gaussian targets: only richer stages are checked
            if validation_noise is not None and optimizer == "lbfgs" and stage is not affine:
                held_out = validation_noise.to(noise.device)
                options["validation"] = partial(_negative_elbo, stage, held_out, chunk, terms=True)
            objective = partial(_negative_elbo, stage, noise, chunk)
            size = stage.n_parameters
            result = minimise(objective, params[:, :size], max_iter=max_iter, tol=tol, **options)
            params = torch.cat([result.params, params[:, size:]], dim=1)
            n_iter = n_iter + result.n_iter
        chunks.append((params, result.loss, n_iter, result.converged))
    return OptimisationResult(*(torch.cat(parts) for parts in zip(*chunks, strict=True)))


def starting_means(
    evidence: Evidence, generator: torch.Generator, n_candidates: int = START_CANDIDATES
) -> torch.Tensor:
    """Each query's best start among the origin and ``n_candidates`` prior draws: ``(Q, L)``.

    The best is the point of highest ``log p(z) + log p(x_o | z)``. A fit started at the
    prior's mean settles in whichever mode lies nearest the origin, however little of the
    posterior it holds (on MNIST we saw one with about ``1e-6`` of the mass, the C-ELBO 13.5
    nats below ``log p(x_o)``). The same candidates serve every query, so a query's start
    does not depend on its batch. At unit scale a start on a sharp mode can overshoot into a
    worse optimum (an MNIST query ended 1 nat lower), hence :data:`START_SCALE`.
    """
    draws = torch.randn(n_candidates, evidence.latent_dim, generator=generator)
    candidates = torch.cat([draws.new_zeros(1, evidence.latent_dim), draws])
    candidates = candidates.to(evidence.x.device)
    with torch.no_grad():
        log_joint = on_points(evidence.log_joint, candidates, evidence)
    # a NaN would win argmax: count it as impossible, so a query with no finite candidate
    # keeps the origin (the first of equal maxima)
    log_joint = log_joint.masked_fill(log_joint.isnan(), -math.inf)
    return candidates[log_joint.argmax(0)]


def _negative_elbo(
    family: AffineFamily,
    noise: torch.Tensor,
    evidence: Evidence,
    params: torch.Tensor,
    index: torch.Tensor,
    terms: bool = False,
) -> torch.Tensor:
    """The loss of the queries ``index`` of ``evidence``: mean over draws, or per draw."""
    values = -conditional_elbo_terms(family, params, noise, evidence.subset(index))
    return values if terms else values.mean(0)
