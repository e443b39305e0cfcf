"""Per-query inference in a frozen VAE: conditional prior networks and reference samplers.

For evidence ``x_o`` the target is the latent posterior ``p(z | x_o) ∝ p(z) p(x_o | z)`` of a
trained decoder (Wu, Domke & Sanner, 2018). Two kinds of answers are offered:

- **Conditional prior networks** fit an invertible map ``z = f(ε)``, ``ε ~ N(0, I)``, by
  maximising the conditional ELBO ``E_ε[log p(x_o | z) + log p(z) - log q(z)]`` over a fixed
  batch of ``ε`` (so the objective is deterministic and L-BFGS applies). Families:
  :class:`AffineFamily` (``"gvi"``), :class:`PlanarFamily` (``"planar"``) and
  :class:`MLPFamily` (``"fcn"``).
- **Reference samplers** draw from the same target: :func:`hmc_sample`,
  :func:`rejection_sample` (latent size ≤ 2) and :func:`pseudo_gibbs_sample`.

Everything is batched across queries: a family's parameters are one ``(Q, P)`` tensor,
one row per query, and the queries' losses are independent. :func:`minimize_lbfgs` and
:func:`minimize_adam` keep a separate state (history, step length, convergence) per query,
so a query's answer does not depend on the queries it is solved with.
"""

from afa.conditional._evidence import Evidence, grid_log_posterior
from afa.conditional._families import (
    FAMILIES,
    MAX_FCN_LATENT,
    AffineFamily,
    MLPFamily,
    PlanarFamily,
    conditional_elbo,
    conditional_elbo_terms,
    fit_conditional_prior,
    quasi_random_noise,
    starting_means,
    whitened_noise,
)
from afa.conditional._optimise import OptimisationResult, minimize_adam, minimize_lbfgs
from afa.conditional._samplers import hmc_sample, pseudo_gibbs_sample, rejection_sample

__all__ = [
    "FAMILIES",
    "MAX_FCN_LATENT",
    "AffineFamily",
    "Evidence",
    "MLPFamily",
    "OptimisationResult",
    "PlanarFamily",
    "conditional_elbo",
    "conditional_elbo_terms",
    "fit_conditional_prior",
    "grid_log_posterior",
    "hmc_sample",
    "minimize_adam",
    "minimize_lbfgs",
    "pseudo_gibbs_sample",
    "quasi_random_noise",
    "rejection_sample",
    "starting_means",
    "whitened_noise",
]
