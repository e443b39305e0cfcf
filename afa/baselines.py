"""Reference imputers with exact conditionals: a Gaussian and a Gaussian mixture.

Both answer the same queries as :class:`afa.PosteriorMatchingImputer` — ``transform`` imputes
``E[x_u | x_o]`` and ``score_conditional`` returns ``log p(x_u | x_o)`` — but in closed form,
which makes them the baselines every arbitrary-conditioning result is compared with.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted, validate_data

from afa._torch import embed_block
from afa.masks import as_observed_mask, row_hash_uniforms
from afa.metrics import gaussian_conditional_log_likelihood, gaussian_conditional_mean

__all__ = ["GaussianImputer", "GaussianMixtureImputer"]

_MATRIX_ELEMENTS_PER_CHUNK = 2**22  # rows x d x d held at once by the mixture conditionals


def _complete_rows(X: Any, name: str) -> np.ndarray:
    """``X`` as a finite float64 matrix of at least two rows, or a ValueError naming ``name``."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} needs a 2-d array; got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} needs complete, finite training rows; X has NaN or inf.")
    if X.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 training rows; got {X.shape[0]} sample.")
    return X


class _ExactConditionalImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Validation and ``score`` shared by the closed-form baselines."""

    def _training_rows(self, X: Any) -> np.ndarray:
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        return _complete_rows(X, type(self).__name__)

    def _check_rows(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")
        return np.array(X)  # a writable copy: pandas inputs arrive read-only

    def _scored_rows(self, X: Any, observed_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        X = self._check_rows(X)
        if np.isnan(X).any():
            raise ValueError("X has NaN: the conditional log-likelihood needs complete rows.")
        return X, as_observed_mask(observed_mask, X.shape)

    def transform(self, X: Any) -> np.ndarray:
        """Replace NaN entries by their exact conditional mean given the row's other entries.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN marks an entry to impute.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            Observed entries are returned unchanged.
        """
        X = self._check_rows(X)
        return self._impute(X, ~np.isnan(X))

    def score_conditional(self, X: Any, observed_mask: Any) -> np.ndarray:
        """Exact ``log p(x_u | x_o)`` per row, in nats, summed over the unobserved entries.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Complete rows.
        observed_mask : array-like of bool, shape (n_samples, n_features)
            True where an entry is conditioned on, False where it is scored.

        Returns
        -------
        ndarray of shape (n_samples,)
            Rows with nothing unobserved score 0.
        """
        X, observed = self._scored_rows(X, observed_mask)
        return self._log_conditional(X, observed)

    def score(self, X: Any, y: None = None) -> float:
        """Mean ``log p(x_u | x_o)`` per row under seeded Bernoulli(0.5) masks.

        The same masks as :meth:`afa.PosteriorMatchingImputer.score` (a fixed function of
        each row's values), so the scores are comparable. Higher is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Complete rows.
        y : None
            Ignored.

        Returns
        -------
        float
        """
        X = self._check_rows(X)
        if np.isnan(X).any():
            raise ValueError("X has NaN: score needs complete rows.")
        observed = row_hash_uniforms(X) >= 0.5
        return float(np.mean(self.score_conditional(X, observed)))


class GaussianImputer(_ExactConditionalImputer):
    """The exact-Gaussian baseline: one multivariate Gaussian fitted to complete rows.

    ``transform`` imputes the exact conditional mean and ``score_conditional`` returns the
    exact conditional log-likelihood, both in the input's units.

    Parameters
    ----------
    reg_covar : float, default=0.0
        Added to the diagonal of the covariance, in the data's squared units. The default
        keeps the exact unbiased covariance; a table with a constant or a linearly dependent
        column (or fewer rows than columns) needs a small positive value.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    covariance_ : ndarray of shape (n_features, n_features)
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 2)) @ [[1.0, 0.9], [0.0, 0.4]]
    >>> imp = GaussianImputer().fit(X)
    >>> imp.transform([[1.0, np.nan]]).round(1)
    array([[1. , 0.9]])
    """

    def __init__(self, *, reg_covar: float = 0.0) -> None:
        self.reg_covar = reg_covar

    def fit(self, X: Any, y: None = None) -> GaussianImputer:
        """Estimate the mean and the (unbiased) covariance of complete rows ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Complete rows; NaN or inf raise a ValueError.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        if not (isinstance(self.reg_covar, (int, float)) and self.reg_covar >= 0):
            raise ValueError(f"reg_covar must be a number >= 0; got {self.reg_covar!r}.")
        X = self._training_rows(X)
        self.mean_ = X.mean(axis=0)
        covariance = np.atleast_2d(np.cov(X, rowvar=False))
        self.covariance_ = covariance + self.reg_covar * np.eye(X.shape[1])
        try:
            np.linalg.cholesky(self.covariance_)
        except np.linalg.LinAlgError:
            raise ValueError(
                "The training rows' covariance is singular (a constant column, a column that "
                "is a linear combination of others, or fewer rows than columns); set "
                "reg_covar > 0, e.g. 1e-6 times the columns' typical variance."
            ) from None
        return self

    def _impute(self, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return gaussian_conditional_mean(self.mean_, self.covariance_, X, observed)

    def _log_conditional(self, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return gaussian_conditional_log_likelihood(self.mean_, self.covariance_, X, observed)


def _masked_component_terms(
    X: torch.Tensor, observed: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log N(x_o; mu_o, S_oo)`` and ``E[x | x_o]`` of one component, for every row at once.

    Each row's observed block is embedded in a full ``d x d`` matrix
    ``A = S * (o o^T) + diag(1 - o)``: its Cholesky factor gives ``log det S_oo``, and
    ``A^-1 (o * (x - mu))`` is ``S_oo^-1 (x_o - mu_o)`` on the observed coordinates and zero
    elsewhere, so no row needs its own index arithmetic.
    """
    factor, info = torch.linalg.cholesky_ex(embed_block(covariance, observed))
    if bool((info != 0).any()):
        raise np.linalg.LinAlgError("an observed covariance block is not positive definite.")
    residual = (X - mean) * observed
    solved = torch.cholesky_solve(residual.unsqueeze(-1), factor).squeeze(-1) * observed
    log_det = 2.0 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
    n_observed = observed.sum(-1)
    log_density = -0.5 * (
        (residual * solved).sum(-1) + log_det + n_observed * math.log(2 * math.pi)
    )
    conditional_mean = mean + solved @ covariance
    return log_density, conditional_mean


class GaussianMixtureImputer(_ExactConditionalImputer):
    """Exact conditionals of a Gaussian mixture fitted by EM to complete rows.

    The conditional of a mixture is again a mixture: the components keep their Gaussian
    conditionals and are reweighted by how well each explains the observed entries,
    ``w_c(x_o) ∝ pi_c N(x_o; mu_c,o, S_c,oo)``. So the conditional mean and
    ``log p(x_u | x_o) = log p(x) - log p(x_o)`` are exact, for any pattern of missing
    entries, and computed for a whole batch of rows with one batched Cholesky per component.

    Parameters
    ----------
    n_components : int, default=8
        Number of mixture components.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance (as in
        :class:`sklearn.mixture.GaussianMixture`).
    max_iter : int, default=200
        EM iterations.
    n_init : int, default=1
        EM restarts; the best is kept.
    random_state : int or None, default=None
        Seed of the EM initialisation.

    Attributes
    ----------
    mixture_ : sklearn.mixture.GaussianMixture
        The fitted mixture (full covariances).
    n_iter_ : int
        EM iterations of the best run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.choice([-3.0, 3.0], size=(400, 1))
    >>> X = np.hstack([centres, centres]) + 0.1 * rng.normal(size=(400, 2))
    >>> imp = GaussianMixtureImputer(n_components=2, random_state=0).fit(X)
    >>> imp.transform([[3.0, np.nan], [np.nan, -3.0]]).round(1)
    array([[ 3.,  3.],
           [-3., -3.]])
    """

    def __init__(
        self,
        n_components: int = 8,
        *,
        reg_covar: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        random_state: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: Any, y: None = None) -> GaussianMixtureImputer:
        """Fit the mixture to complete rows ``X`` by EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Complete rows; NaN raises a ValueError.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        X = self._training_rows(X)
        self.mixture_ = GaussianMixture(
            n_components=self.n_components,
            covariance_type="full",
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            n_init=self.n_init,
            random_state=self.random_state,
        ).fit(X)
        self.n_iter_ = self.mixture_.n_iter_
        return self

    def _conditional(self, X: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: log p(x_o) and E[x | x_o] (observed entries kept)."""
        mixture = self.mixture_
        d = X.shape[1]
        chunk = max(1, _MATRIX_ELEMENTS_PER_CHUNK // (d * d))
        log_weights = torch.from_numpy(np.log(mixture.weights_))
        means = torch.from_numpy(mixture.means_)
        covariances = torch.from_numpy(mixture.covariances_)
        log_marginals, imputed = [], []
        for start in range(0, X.shape[0], chunk):
            rows = torch.from_numpy(np.nan_to_num(X[start : start + chunk]))
            mask = torch.from_numpy(observed[start : start + chunk].astype(np.float64))
            terms = [
                _masked_component_terms(rows, mask, means[c], covariances[c])
                for c in range(mixture.n_components)
            ]
            joint = torch.stack([t[0] for t in terms], dim=-1) + log_weights
            responsibilities = torch.softmax(joint, dim=-1)
            conditional_means = torch.stack([t[1] for t in terms], dim=-1)
            completed = (conditional_means * responsibilities.unsqueeze(1)).sum(-1)
            log_marginals.append(torch.logsumexp(joint, dim=-1).numpy())
            imputed.append(torch.where(mask.bool(), rows, completed).numpy())
        return np.concatenate(log_marginals), np.concatenate(imputed)

    def _impute(self, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return self._conditional(X, observed)[1]

    def _log_conditional(self, X: np.ndarray, observed: np.ndarray) -> np.ndarray:
        log_joint = self.mixture_.score_samples(X)
        return np.where(observed.all(axis=1), 0.0, log_joint - self._conditional(X, observed)[0])
