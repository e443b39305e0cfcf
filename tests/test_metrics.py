"""Tests of afa.metrics against hand-computed values and brute-force conditionals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from afa.metrics import (
    gaussian_conditional_log_likelihood,
    gaussian_conditional_mean,
    nrmse,
    ssim,
)


def test_nrmse_hand_computed():
    X = np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]])  # population stds: sqrt(8/3), sqrt(32/3)
    X_hat = X + np.array([[1.0, 3.0], [3.0, 0.0], [0.0, 0.0]])
    observed = np.array([[False, False], [False, True], [True, True]])
    expected_0 = np.sqrt((1 + 9) / 2) / np.sqrt(8 / 3)
    expected_1 = 3.0 / np.sqrt(32 / 3)
    assert nrmse(X, X_hat, observed) == pytest.approx((expected_0 + expected_1) / 2)


def test_nrmse_ignores_observed_entries_and_fully_observed_features():
    X = np.array([[0.0, 1.0], [2.0, 5.0]])
    X_hat = np.array([[1.0, 100.0], [2.0, -100.0]])
    assert nrmse(X, X_hat, [[False, True], [True, True]]) == pytest.approx(1.0)


def test_nrmse_rejects_nothing_hidden_and_constant_features():
    X = np.array([[1.0, 0.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="nothing to score"):
        nrmse(X, X, np.ones_like(X, dtype=bool))
    with pytest.raises(ValueError, match="constant"):
        nrmse(X, X, [[False, True], [True, True]])
    with pytest.raises(ValueError, match="shape"):
        nrmse(X, X, [[True, False]])


def _random_gaussian(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    A = rng.normal(size=(d, d))
    return rng.normal(size=d), A @ A.T + 0.5 * np.eye(d)


def _brute_force(mean, cov, x, observed):
    """Conditional mean and log-density of one row from the joint and marginal densities."""
    o, u = np.flatnonzero(observed), np.flatnonzero(~observed)
    if u.size == 0:
        return x, 0.0
    joint = multivariate_normal(mean, cov).logpdf(x)
    marginal = multivariate_normal(mean[o], cov[np.ix_(o, o)]).logpdf(x[o]) if o.size else 0.0
    imputed = x.copy()
    imputed[u] = mean[u] + cov[np.ix_(u, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - mean[o])
    return imputed, joint - marginal


def test_gaussian_conditionals_match_brute_force():
    rng = np.random.default_rng(0)
    d = 4
    mean, cov = _random_gaussian(d, rng)
    X = rng.multivariate_normal(mean, cov, size=60)
    observed = rng.random(X.shape) < 0.5
    observed[:3] = [True] * d, [False] * d, [True, False, True, False]
    imputed = gaussian_conditional_mean(mean, cov, np.where(observed, X, np.nan), observed)
    scores = gaussian_conditional_log_likelihood(mean, cov, X, observed)
    for i in range(len(X)):
        expected_row, expected_score = _brute_force(mean, cov, X[i], observed[i])
        np.testing.assert_allclose(imputed[i], expected_row, rtol=1e-10, atol=1e-10)
        assert scores[i] == pytest.approx(expected_score, rel=1e-9, abs=1e-9)
    assert scores[0] == 0.0
    np.testing.assert_array_equal(imputed[observed], X[observed])


def test_gaussian_log_likelihood_rejects_nan_and_bad_shapes():
    mean, cov = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="NaN"):
        gaussian_conditional_log_likelihood(mean, cov, [[np.nan, 0.0]], [[False, True]])
    with pytest.raises(ValueError, match="shape"):
        gaussian_conditional_mean(mean, cov, [[0.0, 0.0, 0.0]], [[True, True, True]])
    with pytest.raises(ValueError, match="0/1"):
        gaussian_conditional_mean(mean, cov, [[0.0, 0.0]], [[2, 1]])


def _slow_ssim(a: np.ndarray, b: np.ndarray, data_range: float, window: int) -> float:
    """SSIM patch by patch from the textbook formula, with sample (ddof=1) moments."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            x = a[i : i + window, j : j + window].ravel()
            y = b[i : i + window, j : j + window].ravel()
            cov = np.cov(x, y, ddof=1)
            luminance = (2 * x.mean() * y.mean() + c1) / (x.mean() ** 2 + y.mean() ** 2 + c1)
            structure = (2 * cov[0, 1] + c2) / (cov[0, 0] + cov[1, 1] + c2)
            values.append(luminance * structure)
    return float(np.mean(values))


def test_ssim_matches_a_patch_by_patch_reference():
    rng = np.random.default_rng(0)
    a = rng.random((11, 13))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(_slow_ssim(a, b, 1.0, 7), rel=1e-10)
    assert ssim(a, b, data_range=2.0, window=5) == pytest.approx(
        _slow_ssim(a, b, 2.0, 5), rel=1e-10
    )


def test_ssim_invariants():
    rng = np.random.default_rng(1)
    image = rng.random((16, 16))
    assert ssim(image, image) == pytest.approx(1.0)
    slightly = np.clip(image + 0.05 * rng.normal(size=image.shape), 0, 1)
    very = np.clip(image + 0.5 * rng.normal(size=image.shape), 0, 1)
    assert ssim(image, slightly) == pytest.approx(ssim(slightly, image))
    assert 1.0 > ssim(image, slightly) > ssim(image, very)
    for other in (slightly, very, 1 - image, rng.random((16, 16))):
        assert -1.0 <= ssim(image, other) <= 1.0


def test_ssim_batches_give_one_value_per_image():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 3, 9, 9)), rng.random((2, 3, 9, 9))
    values = ssim(a, b)
    assert values.shape == (2, 3)
    assert values[1, 2] == pytest.approx(ssim(a[1, 2], b[1, 2]))
    assert isinstance(ssim(a[0, 0], b[0, 0]), float)


def test_ssim_rejects_bad_shapes_and_windows():
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="at least window=7"):
        ssim(np.zeros((6, 8)), np.zeros((6, 8)))
    with pytest.raises(ValueError, match="at least window=7"):
        ssim(np.zeros(64), np.zeros(64))
    with pytest.raises(ValueError, match="odd"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), window=4)
    with pytest.raises(ValueError, match="data_range"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), data_range=0.0)
    with pytest.raises(ValueError, match="data_range must be positive and finite"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), data_range=np.inf)
