"""The afa demo: impute a small real table with Posterior Matching and with baselines.

Half of the test entries are hidden completely at random; every method is fitted on the
complete training rows and judged on the hidden test entries by NRMSE and, where it has a
density, by the mean conditional log-likelihood ``log p(x_u | x_o)`` (nats per row, in the
table's raw units).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.model_selection import train_test_split

from afa.baselines import GaussianImputer
from afa.datasets import load_demo_table
from afa.impute import PosteriorMatchingImputer
from afa.masks import mcar_mask
from afa.metrics import nrmse

__all__ = ["default_methods", "evaluate", "format_table", "run_demo"]

logger = logging.getLogger(__name__)

COLUMNS = [
    "method",
    "NRMSE",
    "mean log p(x_u|x_o)",
    "fit time (s)",
    "impute time (s)",
]
POSTERIORS = ("gaussian", "autoregressive", "flow", "spline")
MISSING_RATE = 0.5
TEST_SIZE = 0.25
ITERATIVE_MAX_ITER = 25


def default_methods(random_state: int = 0) -> dict[str, Any]:
    """The demo's methods with their default settings, by display name.

    Parameters
    ----------
    random_state : int, default=0
        Seed of the estimators that take one.

    Returns
    -------
    dict of str to unfitted estimator

    Notes
    -----
    Fitted on complete rows, ``IterativeImputer`` converges after one round (it has nothing
    to re-impute), so its ``transform`` runs a single round of regressions from mean-filled
    values; ``max_iter`` then has no effect.

    Examples
    --------
    >>> list(default_methods())[:2]
    ['PM (gaussian)', 'PM (autoregressive)']
    """
    methods: dict[str, Any] = {
        f"PM ({p})": PosteriorMatchingImputer(posterior=p, random_state=random_state)
        for p in POSTERIORS
    }
    methods["exact Gaussian"] = GaussianImputer()
    methods["SimpleImputer (mean)"] = SimpleImputer(strategy="mean")
    methods["KNNImputer"] = KNNImputer()
    methods["IterativeImputer"] = IterativeImputer(
        random_state=random_state, max_iter=ITERATIVE_MAX_ITER
    )
    return methods


def _evaluate_one(
    name: str, method: Any, X_train: np.ndarray, X_test: np.ndarray, observed: np.ndarray
) -> dict[str, Any]:
    start = time.perf_counter()
    method.fit(X_train)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    imputed = method.transform(np.where(observed, X_test, np.nan))
    impute_time = time.perf_counter() - start
    logger.info("%s: fitted in %.1f s, imputed in %.2f s", name, fit_time, impute_time)
    log_likelihood = (
        float(np.mean(method.score_conditional(X_test, observed)))
        if hasattr(method, "score_conditional")
        else np.nan
    )
    return dict(
        zip(
            COLUMNS,
            [name, nrmse(X_test, imputed, observed), log_likelihood, fit_time, impute_time],
            strict=True,
        )
    )


def evaluate(
    methods: dict[str, Any], X_train: np.ndarray, X_test: np.ndarray, observed_mask: np.ndarray
) -> pd.DataFrame:
    """Fit every method on ``X_train`` and score its imputation of the hidden test entries.

    Parameters
    ----------
    methods : dict of str to estimator
        Imputers with ``fit`` and ``transform``; those with ``score_conditional`` also get a
        log-likelihood.
    X_train : ndarray of shape (n_train, d)
        Complete training rows.
    X_test : ndarray of shape (n_test, d)
        Complete test rows (the ground truth).
    observed_mask : ndarray of bool, shape (n_test, d)
        True where a test entry is shown to the imputer.

    Returns
    -------
    DataFrame
        One row per method: NRMSE, mean log-likelihood (NaN without a density), fit and
        imputation times in seconds.
    """
    rows = [
        _evaluate_one(name, method, X_train, X_test, observed_mask)
        for name, method in methods.items()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def run_demo(random_state: int = 0) -> pd.DataFrame:
    """Run the demo on the bundled table and return its results.

    The table (:func:`afa.datasets.load_demo_table`) is split 75/25 into train and test,
    half of the test entries are hidden completely at random, and every method of
    :func:`default_methods` is fitted on the training rows and evaluated on the test rows.

    Parameters
    ----------
    random_state : int, default=0
        Seed of the split, the mask and the estimators.

    Returns
    -------
    DataFrame
        See :func:`evaluate`.
    """
    X = load_demo_table().to_numpy(dtype=np.float64)
    X_train, X_test = train_test_split(X, test_size=TEST_SIZE, random_state=random_state)
    observed = mcar_mask(X_test.shape, MISSING_RATE, random_state)
    return evaluate(default_methods(random_state), X_train, X_test, observed)


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, str):
        return value
    return "—" if np.isnan(value) else f"{value:.{digits}f}"


def format_table(results: pd.DataFrame) -> str:
    """Markdown table of :func:`evaluate`'s results; "—" where a method has no density.

    Parameters
    ----------
    results : DataFrame
        As returned by :func:`evaluate` or :func:`run_demo`.

    Returns
    -------
    str

    Examples
    --------
    >>> row = ["mean", 1.0, np.nan, 0.001, 0.0002]
    >>> print(format_table(pd.DataFrame([row], columns=COLUMNS)))
    | method | NRMSE | mean log p(x_u\\|x_o) | fit time (s) | impute time (s) |
    |---|---:|---:|---:|---:|
    | mean | 1.000 | — | 0.00 | 0.00 |
    """
    digits = {"NRMSE": 3, "mean log p(x_u|x_o)": 2, "fit time (s)": 2, "impute time (s)": 2}
    lines = [
        "| " + " | ".join(str(c).replace("|", "\\|") for c in results.columns) + " |",
        "|---" + "|---:" * (len(results.columns) - 1) + "|",
    ]
    for _, row in results.iterrows():
        cells = [_cell(row[c], digits.get(c, 0)) for c in results.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
