"""Unit tests for afa.masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from afa.masks import (
    TRAINING_MASKS,
    as_observed_mask,
    bernoulli_mask,
    mcar_mask,
    row_hash_uniforms,
    uniform_mask,
)


def test_training_mask_registry():
    assert TRAINING_MASKS == {"bernoulli": bernoulli_mask, "uniform": uniform_mask}


def test_bernoulli_mask_rate_and_dtype():
    mask = bernoulli_mask((4000, 5), torch.Generator().manual_seed(0))
    assert mask.shape == (4000, 5)
    assert mask.dtype == torch.bool
    rate = mask.float().mean().item()
    assert abs(rate - 0.5) < 0.02
    # every column is about half observed too (entries are independent)
    assert torch.all((mask.float().mean(0) - 0.5).abs() < 0.04)


@pytest.mark.parametrize("make_mask", [bernoulli_mask, uniform_mask])
def test_training_masks_are_reproducible(make_mask):
    a = make_mask((50, 6), torch.Generator().manual_seed(3))
    b = make_mask((50, 6), torch.Generator().manual_seed(3))
    c = make_mask((50, 6), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_training_masks_use_the_generator_not_global_state():
    torch.manual_seed(0)
    a = bernoulli_mask((20, 5), torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    b = bernoulli_mask((20, 5), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_uniform_mask_counts(n_features):
    mask = uniform_mask((3000, n_features), torch.Generator().manual_seed(0))
    assert mask.shape == (3000, n_features)
    assert mask.dtype == torch.bool
    counts = mask.sum(1)
    # never fully observed; every count 0..d-1 appears, about uniformly
    assert int(counts.max()) <= n_features - 1
    frequencies = torch.bincount(counts, minlength=n_features).float() / 3000
    assert frequencies.shape == (n_features,)
    assert torch.all((frequencies - 1.0 / n_features).abs() < 0.04)


@pytest.mark.parametrize(
    "n_features, observed_fraction, counts",
    [
        (8, (0.25, 0.5), {2, 3, 4}),
        (8, (0.0, 0.2), {0, 1}),  # 2 / 8 would be more than 20%
        (8, (0.9, 1.0), {7}),  # never all 8
        (8, (0.5, 0.5), {4}),
        (256, (0.0, 0.2), set(range(52))),
        # no count in the range: the one nearest its middle, halves up
        (5, (0.1, 0.1), {1}),
        (5, (0.3, 0.3), {2}),
        (5, (0.5, 0.5), {3}),
        (3, (0.5, 0.6), {2}),
    ],
)
def test_uniform_mask_counts_stay_in_the_observed_fraction(n_features, observed_fraction, counts):
    shape = (4000, n_features)
    mask = uniform_mask(shape, torch.Generator().manual_seed(0), "cpu", observed_fraction)
    assert set(mask.sum(1).tolist()) == counts


def test_uniform_mask_default_range_is_every_count_below_d():
    generator = torch.Generator().manual_seed(5)
    explicit = uniform_mask((200, 6), torch.Generator().manual_seed(5), "cpu", (0.0, 1.0))
    assert torch.equal(uniform_mask((200, 6), generator), explicit)
    assert set(explicit.sum(1).tolist()) == set(range(6))


def test_uniform_mask_positions_are_uniform():
    mask = uniform_mask((6000, 4), torch.Generator().manual_seed(1))
    # E[#observed] = (0+1+2+3)/4 = 1.5, spread evenly over 4 positions
    assert torch.all((mask.float().mean(0) - 1.5 / 4).abs() < 0.03)


def test_mcar_mask_rate_dtype_and_reproducibility():
    mask = mcar_mask((2000, 5), 0.3, 0)
    assert mask.shape == (2000, 5)
    assert mask.dtype == bool
    assert abs((~mask).mean() - 0.3) < 0.02
    assert np.array_equal(mask, mcar_mask((2000, 5), 0.3, 0))
    assert not np.array_equal(mask, mcar_mask((2000, 5), 0.3, 1))
    assert np.array_equal(mask, mcar_mask((2000, 5), 0.3, np.random.default_rng(0)))


def test_mcar_mask_edge_rates():
    assert mcar_mask((10, 3), 0.0, 0).all()
    assert not mcar_mask((10, 3), 1.0, 0).any()


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_mcar_mask_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match="missing_rate"):
        mcar_mask((10, 3), rate, 0)


def test_row_hash_uniforms_hash_equal_values_alike():
    rows = np.array([[0.0, np.nan, 1.5]])
    negative_zero = np.array([[-0.0, np.nan, 1.5]])
    other_nan = rows.copy()
    other_nan.view(np.uint64)[0, 1] |= np.uint64(1)  # another NaN payload
    assert np.isnan(other_nan[0, 1])
    expected = row_hash_uniforms(rows)
    np.testing.assert_array_equal(row_hash_uniforms(negative_zero), expected)
    np.testing.assert_array_equal(row_hash_uniforms(other_nan), expected)
    np.testing.assert_array_equal(row_hash_uniforms(rows.tolist()), expected)


def test_observed_mask_with_missing_values_is_a_value_error():
    mask = pd.DataFrame({"a": [True], "b": [pd.NA]}, dtype="boolean")
    with pytest.raises(ValueError, match="boolean .* or 0/1, with no NA"):
        as_observed_mask(mask, (1, 2))


def test_uniform_mask_needs_a_feature():
    with pytest.raises(ValueError, match="at least one feature"):
        uniform_mask((3, 0), torch.Generator().manual_seed(0))
