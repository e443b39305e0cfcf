"""afa: imputation, arbitrary conditional likelihoods and active feature acquisition."""

import logging

from afa.acquisition import AcquisitionPath, LookaheadAcquirer
from afa.exceptions import TrainingDivergedError
from afa.impute import ConditionalPriorImputer, PosteriorMatchingImputer, QueryPosteriors

__version__ = "0.1.0"
__all__ = [
    "AcquisitionPath",
    "ConditionalPriorImputer",
    "LookaheadAcquirer",
    "PosteriorMatchingImputer",
    "QueryPosteriors",
    "TrainingDivergedError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
