"""Correctness against a known truth: a multivariate Gaussian, whose conditionals are exact."""

import numpy as np
import pytest

from afa import PosteriorMatchingImputer
from afa.metrics import gaussian_conditional_log_likelihood, gaussian_conditional_mean, nrmse


@pytest.fixture(scope="module")
def gaussian_problem():
    rng = np.random.default_rng(0)
    d = 4
    factor = rng.normal(size=(d, d))
    cov = factor @ factor.T + 0.1 * np.eye(d)
    mean = rng.normal(size=d) * 3.0
    X_train = rng.multivariate_normal(mean, cov, size=2_000)
    X_test = rng.multivariate_normal(mean, cov, size=500)
    observed = rng.random(X_test.shape) < 0.5
    return mean, cov, X_train, X_test, observed


@pytest.fixture(scope="module")
def fitted(gaussian_problem):
    _, _, X_train, _, _ = gaussian_problem
    return PosteriorMatchingImputer(random_state=0).fit(X_train)


@pytest.mark.slow
def test_conditional_log_likelihood_matches_the_exact_gaussian(gaussian_problem, fitted):
    mean, cov, _, X_test, observed = gaussian_problem
    n_unobserved = (~observed).sum()
    exact = gaussian_conditional_log_likelihood(mean, cov, X_test, observed).sum()
    estimated = fitted.score_conditional(X_test, observed).sum()
    assert abs(estimated - exact) / n_unobserved < 0.1


@pytest.mark.slow
def test_imputation_error_is_close_to_the_exact_conditional_mean(gaussian_problem, fitted):
    mean, cov, _, X_test, observed = gaussian_problem
    X_missing = np.where(observed, X_test, np.nan)
    exact = nrmse(X_test, gaussian_conditional_mean(mean, cov, X_test, observed), observed)
    estimated = nrmse(X_test, fitted.transform(X_missing), observed)
    assert estimated <= 1.05 * exact
