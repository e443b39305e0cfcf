"""Evaluation metrics: imputation error, image similarity and exact Gaussian conditionals.

Convention everywhere in afa: in an ``observed_mask``, ``True`` (or 1) means *observed*; the
other entries are the ones imputed and scored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

from afa.masks import as_observed_mask

__all__ = [
    "gaussian_conditional_log_likelihood",
    "gaussian_conditional_mean",
    "nrmse",
    "ssim",
]


def nrmse(X_true: ArrayLike, X_imputed: ArrayLike, observed_mask: ArrayLike) -> float:
    """Normalised root-mean-square imputation error over the unobserved entries.

    For each feature ``j`` with at least one unobserved entry, the RMSE over its unobserved
    entries is divided by the population standard deviation of ``X_true[:, j]``; the result
    is the mean over those features (the ``nrmse_score`` of the Posterior Matching and ACE
    reference code).

    Parameters
    ----------
    X_true : array-like of shape (n, d)
        Complete ground-truth rows.
    X_imputed : array-like of shape (n, d)
        Imputed rows; only the unobserved entries are compared.
    observed_mask : array-like of bool, shape (n, d)
        True where the entry was observed (not scored).

    Returns
    -------
    float

    Examples
    --------
    >>> X = np.array([[0.0, 1.0], [2.0, 3.0]])
    >>> X_hat = np.array([[1.0, 1.0], [2.0, 3.0]])
    >>> nrmse(X, X_hat, [[False, True], [True, True]])
    1.0
    """
    X_true = np.asarray(X_true, dtype=np.float64)
    X_imputed = np.asarray(X_imputed, dtype=np.float64)
    if X_imputed.shape != X_true.shape:
        raise ValueError(
            f"X_imputed has shape {X_imputed.shape} but X_true has shape {X_true.shape}."
        )
    hidden = ~as_observed_mask(observed_mask, X_true.shape)
    scored = hidden.any(axis=0)
    if not scored.any():
        raise ValueError("observed_mask hides no entry: there is nothing to score.")
    std = X_true.std(axis=0)
    constant = np.flatnonzero(scored & (std == 0))
    if constant.size:
        raise ValueError(f"Features {constant.tolist()} are constant in X_true: NRMSE undefined.")
    squared = np.where(hidden, (X_imputed - X_true) ** 2, 0.0).sum(axis=0)
    rmse = np.sqrt(squared[scored] / hidden.sum(axis=0)[scored])
    return float(np.mean(rmse / std[scored]))


def _window_means(images: np.ndarray, window: int) -> np.ndarray:
    """Mean of every ``window x window`` patch lying inside the images: ``(..., H-w+1, W-w+1)``."""
    patches = np.lib.stride_tricks.sliding_window_view(images, (window, window), axis=(-2, -1))
    return patches.mean(axis=(-2, -1))


def ssim(
    image_a: ArrayLike, image_b: ArrayLike, *, data_range: float = 1.0, window: int = 7
) -> float | np.ndarray:
    """Mean structural similarity (SSIM) of two images, or of two batches of images.

    The local statistics are means, variances and the covariance over a uniform
    ``window x window`` patch, with the sample (``N / (N - 1)``) correction of the variances;
    ``C1 = (0.01 R)²`` and ``C2 = (0.03 R)²`` with ``R = data_range``. The result is the mean
    over the patches lying entirely inside the image, which matches scikit-image's
    ``structural_similarity`` with its defaults (``win_size=7``,
    ``use_sample_covariance=True``) for a given ``data_range``.

    Parameters
    ----------
    image_a, image_b : array-like of shape (..., H, W)
        Images of the same shape; leading axes index a batch.
    data_range : float, default=1.0
        The dynamic range of the pixel values (max possible minus min possible).
    window : int, default=7
        Side of the square window; odd and at least 3.

    Returns
    -------
    float or ndarray of shape (...)
        A float for two 2-D images, otherwise one value per image; in ``[-1, 1]``, and 1 for
        identical images.

    Raises
    ------
    ValueError
        When the shapes differ, an image is smaller than the window, the window is not an
        odd integer of at least 3, or ``data_range`` is not positive and finite.

    Examples
    --------
    >>> image = np.arange(64.0).reshape(8, 8) / 63
    >>> ssim(image, image)
    1.0
    >>> ssim(np.stack([image, image]), np.stack([image, 1 - image])).round(3)
    array([ 1.   , -0.955])
    """
    a = np.asarray(image_a, dtype=np.float64)
    b = np.asarray(image_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image_a has shape {a.shape} but image_b has shape {b.shape}.")
    if not isinstance(window, numbers.Integral) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer of at least 3; got {window!r}.")
    if a.ndim < 2 or min(a.shape[-2:]) < window:
        raise ValueError(
            f"ssim needs images of shape (..., H, W) with H and W at least window={window}; "
            f"got shape {a.shape}."
        )
    if not 0 < data_range < math.inf:
        raise ValueError(f"data_range must be positive and finite; got {data_range!r}.")
    mean_a, mean_b = _window_means(a, window), _window_means(b, window)
    correction = window**2 / (window**2 - 1)
    var_a = correction * (_window_means(a * a, window) - mean_a**2)
    var_b = correction * (_window_means(b * b, window) - mean_b**2)
    cov = correction * (_window_means(a * b, window) - mean_a * mean_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    local = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    values = local.mean(axis=(-2, -1))
    return float(values) if values.ndim == 0 else values


def _check_gaussian(
    mean: ArrayLike, cov: ArrayLike, X: ArrayLike, observed_mask: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    d = mean.shape[0]
    if mean.ndim != 1 or cov.shape != (d, d):
        raise ValueError(f"mean must be (d,) and cov (d, d); got {mean.shape} and {cov.shape}.")
    if X.ndim != 2 or X.shape[1] != d:
        raise ValueError(f"X must have shape (n, {d}); got {X.shape}.")
    return mean, cov, X, as_observed_mask(observed_mask, X.shape)


def _conditionals(
    mean: np.ndarray, cov: np.ndarray, X: np.ndarray, observed: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per mask pattern with something unobserved: rows, unobserved index, means, covariance.

    The conditional of ``x_u`` given ``x_o`` has mean
    ``mu_u + S_uo S_oo^-1 (x_o - mu_o)`` and covariance ``S_uu - S_uo S_oo^-1 S_ou``.
    """
    patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        if pattern.all():
            continue
        rows = np.flatnonzero(inverse.ravel() == k)
        o, u = np.flatnonzero(pattern), np.flatnonzero(~pattern)
        gain = np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, u)]).T  # S_uo S_oo^-1
        means = mean[u] + (X[np.ix_(rows, o)] - mean[o]) @ gain.T
        covariance = cov[np.ix_(u, u)] - gain @ cov[np.ix_(o, u)]
        yield rows, u, means, covariance


def gaussian_conditional_mean(
    mean: ArrayLike, cov: ArrayLike, X: ArrayLike, observed_mask: ArrayLike
) -> np.ndarray:
    """Impute with the exact conditional mean ``E[x_u | x_o]`` of a multivariate Gaussian.

    Rows are grouped by mask pattern, so the cost is one linear solve per distinct pattern.

    Parameters
    ----------
    mean : array-like of shape (d,)
    cov : array-like of shape (d, d)
        Positive-definite covariance.
    X : array-like of shape (n, d)
        Rows; unobserved entries are ignored and may be NaN.
    observed_mask : array-like of bool, shape (n, d)
        True where the entry is observed.

    Returns
    -------
    ndarray of shape (n, d)
        ``X`` with every unobserved entry replaced; observed entries are unchanged.

    Examples
    --------
    >>> cov = [[1.0, 0.5], [0.5, 1.0]]
    >>> gaussian_conditional_mean([0.0, 0.0], cov, [[2.0, np.nan]], [[True, False]])
    array([[2., 1.]])
    """
    mean, cov, X, observed = _check_gaussian(mean, cov, X, observed_mask)
    imputed = X.copy()
    for rows, u, means, _ in _conditionals(mean, cov, X, observed):
        imputed[np.ix_(rows, u)] = means
    return imputed


def gaussian_conditional_log_likelihood(
    mean: ArrayLike, cov: ArrayLike, X: ArrayLike, observed_mask: ArrayLike
) -> np.ndarray:
    """Exact ``log p(x_u | x_o)`` per row under a multivariate Gaussian, in nats.

    The log-density is summed over the unobserved entries of each row (total nats per row,
    not per feature); rows with nothing unobserved score 0.

    Parameters
    ----------
    mean : array-like of shape (d,)
    cov : array-like of shape (d, d)
        Positive-definite covariance.
    X : array-like of shape (n, d)
        Complete rows.
    observed_mask : array-like of bool, shape (n, d)
        True where the entry is observed (conditioned on), False where it is scored.

    Returns
    -------
    ndarray of shape (n,)

    Examples
    --------
    With nothing observed this is the marginal density; a standard normal at 0 gives
    ``-log(2 pi) / 2``:

    >>> ll = gaussian_conditional_log_likelihood([0.0], [[1.0]], [[0.0], [5.0]], [[0], [1]])
    >>> ll.round(4)
    array([-0.9189,  0.    ])
    """
    mean, cov, X, observed = _check_gaussian(mean, cov, X, observed_mask)
    if np.isnan(X).any():
        raise ValueError("X has NaN: the conditional log-likelihood needs complete rows.")
    scores = np.zeros(X.shape[0])
    for rows, u, means, covariance in _conditionals(mean, cov, X, observed):
        cholesky = np.linalg.cholesky(covariance)
        whitened = np.linalg.solve(cholesky, (X[np.ix_(rows, u)] - means).T)
        log_det = 2.0 * np.log(np.diag(cholesky)).sum()
        scores[rows] = -0.5 * ((whitened**2).sum(axis=0) + log_det + len(u) * np.log(2 * np.pi))
    return scores
