"""scikit-learn estimators for imputation and arbitrary conditional likelihoods.

- :class:`PosteriorMatchingImputer`: a VAE trained with a partial posterior ``q(z | x_o)``
  (Strauss & Oliva, 2022); amortised answers to every query.
- :class:`ConditionalPriorImputer`: per-query conditional priors fitted against a frozen
  VAE's decoder (Wu, Domke & Sanner, 2018), with reference samplers.
"""

from afa.impute._conditional_prior import ConditionalPriorImputer, QueryPosteriors
from afa.impute._posterior_matching import PosteriorMatchingImputer

__all__ = ["ConditionalPriorImputer", "PosteriorMatchingImputer", "QueryPosteriors"]
