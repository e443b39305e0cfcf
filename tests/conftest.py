"""Shared fixtures for the afa test suite: tiny data and tiny fitted imputers."""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. With
# spinning threads, tiny models on a loaded 2-core machine run up to 100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from afa import PosteriorMatchingImputer  # noqa: E402

# The test machine has two cores; keep torch from oversubscribing them (AFA_TEST_NUM_THREADS
# overrides the number).
NUM_THREADS = int(os.environ.get("AFA_TEST_NUM_THREADS", "2"))
torch.set_num_threads(NUM_THREADS)

TINY = dict(
    latent_dim=2,
    hidden_layer_sizes=(8,),
    max_iter=2,
    n_samples=8,
    random_state=0,
)


def tiny_imputer(**overrides) -> PosteriorMatchingImputer:
    """A PosteriorMatchingImputer with tiny settings (fast on CPU)."""
    return PosteriorMatchingImputer(**{**TINY, **overrides})


def make_data(n: int = 120, d: int = 4, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian data, offset and scaled so standardisation matters."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) + np.eye(d)
    return rng.normal(size=(n, d)) @ mixing * np.arange(1, d + 1) + 10.0 * np.arange(d)


def with_missing(X: np.ndarray, rate: float = 0.3, seed: int = 1) -> np.ndarray:
    """Copy of X with MCAR NaNs, keeping at least one observed entry per row."""
    rng = np.random.default_rng(seed)
    hidden = rng.random(X.shape) < rate
    hidden[np.arange(X.shape[0]), rng.integers(X.shape[1], size=X.shape[0])] = False
    X_nan = X.astype(float, copy=True)
    X_nan[hidden] = np.nan
    return X_nan


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    torch.set_num_threads(NUM_THREADS)
    yield


@pytest.fixture(scope="session")
def data() -> np.ndarray:
    return make_data()


@pytest.fixture(scope="session")
def data_nan(data) -> np.ndarray:
    return with_missing(data)


@pytest.fixture(scope="session")
def fitted(data_nan) -> PosteriorMatchingImputer:
    """A tiny imputer fitted on data with NaN. Tests must not refit or mutate it."""
    return tiny_imputer().fit(data_nan)
