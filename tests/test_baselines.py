"""The exact-conditional baselines: a Gaussian and a Gaussian mixture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from afa.baselines import GaussianImputer, GaussianMixtureImputer
from afa.masks import row_hash_uniforms


@pytest.fixture(scope="module")
def two_clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.choice([-2.0, 2.0], size=(600, 1)) * np.array([[1.0, -1.0, 0.5, 0.0]])
    return centres + rng.normal(size=(600, 4)) @ np.diag([0.3, 0.5, 0.4, 1.0])


@pytest.fixture(scope="module")
def fitted_mixture(two_clusters) -> GaussianMixtureImputer:
    return GaussianMixtureImputer(n_components=3, random_state=0).fit(two_clusters)


def brute_force_conditional(mixture, x: np.ndarray, observed: np.ndarray) -> float:
    """log p(x_u | x_o) of a fitted sklearn mixture, one component at a time with scipy."""

    def log_density(index: np.ndarray) -> float:
        return logsumexp(
            [
                np.log(weight)
                + multivariate_normal(mean[index], cov[np.ix_(index, index)]).logpdf(x[index])
                for weight, mean, cov in zip(
                    mixture.weights_, mixture.means_, mixture.covariances_, strict=True
                )
            ]
        )

    everything = np.ones_like(observed)
    return log_density(everything) - (log_density(observed) if observed.any() else 0.0)


def test_mixture_log_likelihood_matches_component_by_component_formula(
    two_clusters, fitted_mixture
):
    observed = np.random.default_rng(1).random((12, 4)) < 0.5
    observed[0] = False  # nothing observed: the joint density
    rows = two_clusters[:12]
    scores = fitted_mixture.score_conditional(rows, observed)
    expected = [
        brute_force_conditional(fitted_mixture.mixture_, x, o)
        for x, o in zip(rows, observed, strict=True)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)


def test_mixture_scores_zero_for_fully_observed_rows(two_clusters, fitted_mixture):
    observed = np.ones((5, 4), dtype=bool)
    np.testing.assert_array_equal(fitted_mixture.score_conditional(two_clusters[:5], observed), 0)


def test_mixture_imputes_from_the_responsible_cluster(fitted_mixture):
    imputed = fitted_mixture.transform([[2.0, np.nan, np.nan, 0.0], [-2.0, np.nan, np.nan, 0.0]])
    np.testing.assert_allclose(imputed[:, 1:3], [[-2.0, 1.0], [2.0, -1.0]], atol=0.15)
    np.testing.assert_array_equal(imputed[:, [0, 3]], [[2.0, 0.0], [-2.0, 0.0]])


def test_one_component_mixture_is_the_exact_gaussian(two_clusters):
    observed = np.random.default_rng(2).random((50, 4)) < 0.5
    rows = two_clusters[:50]
    gaussian = GaussianImputer().fit(two_clusters)
    mixture = GaussianMixtureImputer(n_components=1).fit(two_clusters)
    # GaussianImputer uses the unbiased covariance; the mixture the maximum-likelihood one,
    # plus reg_covar on its diagonal.
    np.testing.assert_allclose(
        mixture.score_conditional(rows, observed),
        gaussian.score_conditional(rows, observed),
        atol=0.01,
    )
    np.testing.assert_allclose(
        mixture.transform(np.where(observed, rows, np.nan)),
        gaussian.transform(np.where(observed, rows, np.nan)),
        atol=1e-4,
    )


def test_mixture_results_do_not_depend_on_chunking(two_clusters, fitted_mixture, monkeypatch):
    observed = np.random.default_rng(3).random((40, 4)) < 0.5
    rows = np.where(observed, two_clusters[:40], np.nan)
    whole = fitted_mixture.transform(rows)
    monkeypatch.setattr("afa.baselines._MATRIX_ELEMENTS_PER_CHUNK", 7 * 16)
    np.testing.assert_allclose(fitted_mixture.transform(rows), whole, rtol=1e-12)


@pytest.mark.parametrize("imputer", [GaussianImputer(), GaussianMixtureImputer(n_components=1)])
def test_baselines_keep_observed_entries(imputer):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    X_nan = X[:5].copy()
    X_nan[0, 1] = X_nan[2, 0] = np.nan
    imputed = imputer.fit(X).transform(X_nan)
    observed = ~np.isnan(X_nan)
    np.testing.assert_array_equal(imputed[observed], X_nan[observed])
    assert not np.isnan(imputed).any()


@pytest.mark.parametrize("imputer", [GaussianImputer(), GaussianMixtureImputer()])
def test_baselines_must_be_fitted(imputer):
    with pytest.raises(NotFittedError):
        imputer.transform(np.zeros((1, 2)))


@pytest.mark.parametrize("imputer", [GaussianImputer(), GaussianMixtureImputer()])
def test_baselines_refuse_missing_training_entries(imputer):
    with pytest.raises(ValueError, match="complete, finite training rows"):
        imputer.fit([[1.0, np.nan], [2.0, 3.0]])


def test_mixture_rejects_wrong_shapes(fitted_mixture, two_clusters):
    with pytest.raises(ValueError, match="4 features"):
        fitted_mixture.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="observed_mask has shape"):
        fitted_mixture.score_conditional(two_clusters[:2], np.ones((2, 3), dtype=bool))


def test_gaussian_refuses_a_singular_covariance_unless_regularised():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(size=(50, 2)), np.ones((50, 1))])  # a constant column
    with pytest.raises(ValueError, match="covariance is singular.*reg_covar"):
        GaussianImputer().fit(X)
    imputed = GaussianImputer(reg_covar=1e-6).fit(X).transform([[np.nan, 0.2, 1.0]])
    assert np.isfinite(imputed).all() and imputed[0, 2] == 1.0
    with pytest.raises(ValueError, match="at least 2 training rows"):
        GaussianImputer().fit(X[:1])
    with pytest.raises(ValueError, match="reg_covar must be a number >= 0"):
        GaussianImputer(reg_covar=-1.0).fit(X)


@pytest.mark.parametrize("imputer", [GaussianImputer(), GaussianMixtureImputer(n_components=2)])
def test_baselines_check_columns_and_values_like_the_estimators(imputer, two_clusters):
    frame = pd.DataFrame(two_clusters, columns=["a", "b", "c", "d"])
    imputer.set_params(**({"random_state": 0} if "random_state" in imputer.get_params() else {}))
    imputer.fit(frame)
    with pytest.raises(ValueError, match="feature names"):
        imputer.transform(frame[["d", "c", "b", "a"]])
    with pytest.raises(ValueError, match="infinity"):
        imputer.transform(pd.DataFrame([[np.inf, np.nan, 0.0, 0.0]], columns=list("abcd")))
    out = imputer.set_output(transform="pandas").transform(frame.iloc[:3].mask(np.eye(3, 4) > 0))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b", "c", "d"]
    imputer.set_output(transform="default")


@pytest.mark.parametrize("imputer", [GaussianImputer(), GaussianMixtureImputer(n_components=2)])
def test_baseline_score_uses_the_estimators_seeded_masks(imputer, two_clusters):
    imputer.fit(two_clusters)
    observed = row_hash_uniforms(two_clusters) >= 0.5
    expected = imputer.score_conditional(two_clusters, observed).mean()
    assert imputer.score(two_clusters) == pytest.approx(expected)
    search = GridSearchCV(GaussianMixtureImputer(random_state=0), {"n_components": [1, 2]}, cv=2)
    assert search.fit(two_clusters).best_params_ == {"n_components": 2}


@parametrize_with_checks(
    [GaussianImputer(), GaussianMixtureImputer(n_components=2, random_state=0)],
    expected_failed_checks=lambda _: {
        "check_estimators_nan_inf": "transform takes NaN by design (it marks the entries to "
        "impute), while fit needs complete rows, a combination the check does not allow for"
    },
)
def test_baselines_are_scikit_learn_estimators(estimator, check):
    check(estimator)
