"""Plain ``nn.Module`` models; the estimators in :mod:`afa.impute` wrap them."""

from afa.models.likelihoods import BernoulliLikelihood, GaussianLikelihood, make_likelihood
from afa.models.vae import PosteriorMatchingVAE

__all__ = [
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "PosteriorMatchingVAE",
    "make_likelihood",
]
