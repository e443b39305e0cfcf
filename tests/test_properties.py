"""Property-based tests (hypothesis) of a fitted imputer's per-row guarantees."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_data, tiny_imputer, with_missing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

D = 4
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,  # do not write a .hypothesis directory into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module", params=["heteroscedastic", "correlated"])
def imputer(request):
    fitted = tiny_imputer(decoder_scale=request.param)
    return fitted.fit(with_missing(make_data(seed=3), seed=4))


values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def rows_and_masks(draw, min_rows=1, max_rows=6):
    n = draw(st.integers(min_rows, max_rows))
    X = draw(hnp.arrays(np.float64, (n, D), elements=values))
    mask = draw(hnp.arrays(np.bool_, (n, D)))
    return X, mask


def _with_nan(X, mask):
    return np.where(mask, X, np.nan)


@SETTINGS
@given(data=rows_and_masks())
def test_observed_entries_unchanged_and_outputs_finite(imputer, data):
    X, mask = data
    X_nan = _with_nan(X, mask)
    out = imputer.transform(X_nan)
    assert out.shape == X.shape
    assert np.all(np.isfinite(out))
    assert np.array_equal(out[mask], X[mask])
    draws = imputer.sample(X_nan, n_samples=2)
    assert np.all(np.isfinite(draws))
    assert np.array_equal(draws[:, mask], np.broadcast_to(X[mask], (2, mask.sum())))


@SETTINGS
@given(data=rows_and_masks(min_rows=2), float32=st.booleans())
def test_observed_entries_unchanged_float32(imputer, data, float32):
    X, mask = data
    X_nan = _with_nan(X, mask).astype(np.float32 if float32 else np.float64)
    out = imputer.transform(X_nan)
    assert out.dtype == X_nan.dtype
    assert np.array_equal(out[mask], X_nan[mask])


@SETTINGS
@given(data=rows_and_masks(min_rows=2), seed=st.integers(0, 2**16))
def test_transform_is_independent_of_batch_and_order(imputer, data, seed):
    X, mask = data
    X_nan = _with_nan(X, mask)
    full = imputer.transform(X_nan)
    # The networks run in float32, where a different batch may round differently; the
    # rounding scales with the magnitude of the inputs (up to 1e3 here), not of the output.
    atol = 1e-5 * (1.0 + np.abs(X).max())
    for i in range(len(X)):
        alone = imputer.transform(X_nan[i : i + 1])
        np.testing.assert_allclose(alone[0], full[i], rtol=1e-5, atol=atol)
    perm = np.random.default_rng(seed).permutation(len(X))
    np.testing.assert_allclose(imputer.transform(X_nan[perm]), full[perm], rtol=1e-5, atol=atol)


@SETTINGS
@given(data=rows_and_masks(min_rows=2), seed=st.integers(0, 2**16))
def test_score_conditional_is_row_independent(imputer, data, seed):
    X, mask = data
    X = X / 100.0  # keep the densities in a moderate range
    full = imputer.score_conditional(X, mask)
    assert full.shape == (len(X),)
    assert np.all(np.isfinite(full))
    for i in range(len(X)):
        alone = imputer.score_conditional(X[i : i + 1], mask[i : i + 1])
        np.testing.assert_allclose(alone[0], full[i], rtol=1e-5, atol=1e-4)
    perm = np.random.default_rng(seed).permutation(len(X))
    np.testing.assert_allclose(
        imputer.score_conditional(X[perm], mask[perm]), full[perm], rtol=1e-5, atol=1e-4
    )


@SETTINGS
@given(data=rows_and_masks())
def test_score_conditional_zero_when_nothing_unobserved(imputer, data):
    X, mask = data
    X = X / 100.0
    mask[0] = True
    scores = imputer.score_conditional(X, mask)
    assert scores[0] == 0.0
    assert np.array_equal(scores[mask.all(axis=1)], np.zeros(mask.all(axis=1).sum()))
    assert np.all(scores[~mask.all(axis=1)] != 0.0)
