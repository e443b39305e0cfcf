"""Plain ``nn.Module`` models; the estimators in :mod:`afa.impute` wrap them."""

from afa.models.likelihoods import (
    BernoulliLikelihood,
    CorrelatedGaussianLikelihood,
    GaussianLikelihood,
    make_likelihood,
)
from afa.models.vae import PosteriorMatchingVAE

__all__ = [
    "BernoulliLikelihood",
    "CorrelatedGaussianLikelihood",
    "GaussianLikelihood",
    "PosteriorMatchingVAE",
    "make_likelihood",
]
