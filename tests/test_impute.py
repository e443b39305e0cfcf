"""Tests of the PosteriorMatchingImputer estimator (the public API of DESIGN.md section 2)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_imputer, with_missing
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from afa import PosteriorMatchingImputer
from afa.models import PosteriorMatchingVAE
from afa.posteriors import POSTERIOR_FAMILIES

HISTORY_KEYS = {"loss", "val_loss", "elbo", "pm", "kl"}


@pytest.fixture(scope="module")
def frame(data_nan):
    return pd.DataFrame(
        data_nan, columns=["a", "b", "c", "d"], index=np.arange(1000, 1000 + len(data_nan))
    )


@pytest.fixture(scope="module")
def fitted_frame(frame):
    return tiny_imputer().fit(frame)


# ---------------------------------------------------------------- fit


def test_fit_returns_self_and_sets_attributes(data_nan):
    imp = tiny_imputer()
    assert imp.fit(data_nan) is imp
    assert imp.n_features_in_ == 4
    assert not hasattr(imp, "feature_names_in_")
    assert imp.n_iter_ == 2
    assert len(imp.loss_curve_) == imp.n_iter_
    assert HISTORY_KEYS <= set(imp.history_)
    for key in HISTORY_KEYS:
        assert len(imp.history_[key]) == imp.n_iter_
        assert np.all(np.isfinite(imp.history_[key]))
    assert imp.loss_curve_ == imp.history_["loss"]
    assert isinstance(imp.model_, PosteriorMatchingVAE)
    assert imp.hyperparameters_["latent_dim"] == 2
    assert imp.hyperparameters_["hidden_layer_sizes"] == (8,)
    assert imp.hyperparameters_["max_iter"] == 2
    np.testing.assert_allclose(imp.mean_, np.nanmean(data_nan, axis=0))
    np.testing.assert_allclose(imp.scale_, np.nanstd(data_nan, axis=0))


def test_fit_on_dataframe_sets_feature_names(fitted_frame, frame):
    assert fitted_frame.n_features_in_ == 4
    assert list(fitted_frame.feature_names_in_) == ["a", "b", "c", "d"]
    assert list(fitted_frame.get_feature_names_out()) == ["a", "b", "c", "d"]


def test_get_feature_names_out_for_arrays(fitted):
    assert list(fitted.get_feature_names_out()) == ["x0", "x1", "x2", "x3"]
    with pytest.raises(ValueError):
        fitted.get_feature_names_out(["a", "b"])


def test_init_only_stores_parameters():
    imp = PosteriorMatchingImputer(latent_dim=0, posterior="nope")  # validated in fit
    assert imp.get_params()["latent_dim"] == 0
    assert imp.get_params()["posterior"] == "nope"
    defaults = PosteriorMatchingImputer().get_params()
    for value in defaults.values():
        assert not isinstance(value, (list, dict, set, np.ndarray))


def test_fit_without_early_stopping_has_no_validation_loss(data_nan):
    imp = tiny_imputer(early_stopping=False).fit(data_nan)
    assert imp.n_iter_ == 2
    assert "val_loss" not in imp.history_


def test_early_stopping_can_stop_before_max_iter(data_nan):
    # with tol huge nothing counts as an improvement after the first epoch
    imp = tiny_imputer(max_iter=10, tol=1e9, n_iter_no_change=1).fit(data_nan)
    assert imp.n_iter_ == 2
    assert len(imp.loss_curve_) == 2


# ---------------------------------------------------------------- transform


def test_transform_fills_nan_and_keeps_observed_bit_for_bit(fitted, data_nan):
    original = data_nan.copy()
    out = fitted.transform(data_nan)
    observed = ~np.isnan(data_nan)
    assert out.shape == data_nan.shape
    assert out.dtype == np.float64
    assert np.all(np.isfinite(out))
    assert np.array_equal(out[observed], data_nan[observed])
    assert np.array_equal(data_nan, original, equal_nan=True)  # the input is not modified


def test_transform_of_complete_rows_is_identity(fitted, data):
    out = fitted.transform(data[:10])
    assert np.array_equal(out, data[:10])


def test_transform_float32_in_float32_out(fitted, data_nan):
    X32 = data_nan.astype(np.float32)
    out = fitted.transform(X32)
    assert out.dtype == np.float32
    observed = ~np.isnan(X32)
    assert np.array_equal(out[observed], X32[observed])
    assert np.all(np.isfinite(out))
    # the imputed values agree with the float64 path up to float32 rounding
    np.testing.assert_allclose(out, fitted.transform(X32.astype(np.float64)), rtol=1e-5, atol=1e-4)


def test_a_dataframe_keeps_each_float_column_dtype(data_nan):
    frame = pd.DataFrame(data_nan, columns=["a", "b", "c", "d"]).astype(
        {"a": np.float32, "b": "Float64", "c": "Float32"}
    )
    fitted = tiny_imputer().fit(frame)
    out = fitted.transform(frame)
    assert out.dtypes.tolist() == frame.dtypes.tolist()
    assert not out.isna().any().any()
    observed = frame.notna().to_numpy()
    np.testing.assert_array_equal(
        out.to_numpy(dtype=np.float64)[observed], frame.to_numpy(dtype=np.float64)[observed]
    )


def test_transform_imputations_are_in_data_units(fitted, data, data_nan):
    out = fitted.transform(data_nan)
    missing = np.isnan(data_nan)
    # columns have means 0, 10, 20, 30: imputations should land near their own column
    for j in range(4):
        values = out[missing[:, j], j]
        assert np.all(np.abs(values - data[:, j].mean()) < 4 * data[:, j].std())


def test_transform_all_missing_row(fitted):
    out = fitted.transform(np.full((3, 4), np.nan))
    assert np.all(np.isfinite(out))
    assert np.array_equal(out[0], out[1])  # same (empty) evidence, same answer


def test_transform_is_deterministic(fitted, data_nan):
    a = fitted.transform(data_nan)
    assert np.array_equal(a, fitted.transform(data_nan))
    # a row's imputation does not depend on the rest of the batch
    np.testing.assert_allclose(fitted.transform(data_nan[5:9]), a[5:9], rtol=1e-6, atol=1e-6)


def _fit_transform_under_global_seed(global_seed, X, **params):
    torch.manual_seed(global_seed)
    return tiny_imputer(**params).fit(X).transform(X)


def test_random_state_changes_the_result(data_nan):
    a = _fit_transform_under_global_seed(0, data_nan)
    b = _fit_transform_under_global_seed(0, data_nan)
    c = _fit_transform_under_global_seed(0, data_nan, random_state=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_random_state_gives_identical_transform(data_nan, dropout):
    a = _fit_transform_under_global_seed(1, data_nan, dropout=dropout)
    b = _fit_transform_under_global_seed(2, data_nan, dropout=dropout)
    assert np.array_equal(a, b)


def test_inference_does_not_touch_global_rng(fitted, data_nan, data):
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - the legacy global RNG is what must stay untouched
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)  # noqa: NPY002
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002
    fitted.transform(data_nan)
    fitted.sample(data_nan[:5], 2)
    fitted.score(data[:20])
    fitted.score_conditional(data[:5], np.eye(5, 4, dtype=bool))
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)  # noqa: NPY002


def test_dataframe_in_dataframe_out(fitted_frame, frame):
    out = fitted_frame.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(frame.index)
    assert list(out.columns) == ["a", "b", "c", "d"]
    observed = frame.notna().to_numpy()
    assert np.array_equal(out.to_numpy()[observed], frame.to_numpy()[observed])
    assert not out.isna().any().any()


def test_set_output_pandas(data_nan):
    imp = tiny_imputer().set_output(transform="pandas")
    out = imp.fit_transform(data_nan)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["x0", "x1", "x2", "x3"]
    assert not out.isna().any().any()
    np.testing.assert_array_equal(out.to_numpy(), imp.transform(data_nan).to_numpy())


def test_fit_transform_equals_fit_then_transform(data_nan):
    torch.manual_seed(0)  # see test_same_random_state_gives_identical_transform
    a = tiny_imputer().fit_transform(data_nan)
    torch.manual_seed(0)
    b = tiny_imputer().fit(data_nan).transform(data_nan)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- sample


def test_sample_shapes_and_observed_entries(fitted, data_nan):
    draws = fitted.sample(data_nan[:20], n_samples=5)
    assert draws.shape == (5, 20, 4)
    assert draws.dtype == np.float64
    observed = ~np.isnan(data_nan[:20])
    for draw in draws:
        assert np.array_equal(draw[observed], data_nan[:20][observed])
    assert np.all(np.isfinite(draws))
    # draws differ from each other on missing entries
    assert not np.allclose(draws[0][~observed], draws[1][~observed])


def test_sample_float32_and_seeding(fitted, data_nan):
    X = data_nan[:10]
    assert fitted.sample(X.astype(np.float32), n_samples=2).dtype == np.float32
    assert np.array_equal(fitted.sample(X, 3), fitted.sample(X, 3))
    assert np.array_equal(fitted.sample(X, 3, random_state=7), fitted.sample(X, 3, random_state=7))
    assert not np.array_equal(
        fitted.sample(X, 3, random_state=7), fitted.sample(X, 3, random_state=8)
    )


def test_sample_default_and_bad_n_samples(fitted, data_nan):
    assert fitted.sample(data_nan[:3]).shape == (10, 3, 4)
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(data_nan[:3], n_samples=0)


# ---------------------------------------------------------------- scoring


def test_score_conditional_shape_and_zero_rows(fitted, data):
    X = data[:12]
    mask = np.random.default_rng(0).random(X.shape) < 0.5
    mask[:3] = True
    scores = fitted.score_conditional(X, mask)
    assert scores.shape == (12,)
    assert np.all(np.isfinite(scores))
    assert np.array_equal(scores[:3], np.zeros(3))
    scored = ~mask.all(axis=1)
    assert np.all(scores[scored] != 0)


def test_score_conditional_accepts_int_masks_and_n_samples(fitted, data):
    X = data[:6]
    mask = np.random.default_rng(1).random(X.shape) < 0.5
    a = fitted.score_conditional(X, mask)
    np.testing.assert_array_equal(fitted.score_conditional(X, mask.astype(int)), a)
    b = fitted.score_conditional(X, mask, n_samples=32)
    assert b.shape == (6,)
    assert np.all(np.isfinite(b))


def test_score_conditional_units(data_nan, data):
    """Scaling the data by c shifts log-densities of each unobserved entry by -log c."""
    torch.manual_seed(0)  # see test_same_random_state_gives_identical_transform
    imp = tiny_imputer().fit(data_nan)
    torch.manual_seed(0)
    scaled = tiny_imputer().fit(data_nan * 10.0)
    mask = np.random.default_rng(2).random((10, 4)) < 0.5
    n_unobserved = (~mask).sum(axis=1)
    np.testing.assert_allclose(
        scaled.score_conditional(data[:10] * 10.0, mask),
        imp.score_conditional(data[:10], mask) - n_unobserved * np.log(10.0),
        rtol=1e-4,
        atol=1e-3,
    )


def test_score_conditional_with_nothing_observed_is_a_log_density(fitted, data):
    """With nothing observed, score_conditional estimates log p(x); it must not be ~0."""
    scores = fitted.score_conditional(data[:5], np.zeros((5, 4), dtype=bool))
    assert np.all(np.isfinite(scores))
    assert np.all(scores < 0)


def test_score_returns_float(fitted, data, data_nan):
    s = fitted.score(data)
    assert isinstance(s, float)
    assert np.isfinite(s)
    assert fitted.score(data) == s
    s_nan = fitted.score(data_nan)
    assert isinstance(s_nan, float) and np.isfinite(s_nan)


def test_score_prefers_data_like_the_training_data(fitted, data):
    far = data + 50 * data.std(axis=0)
    assert fitted.score(data) > fitted.score(far) + 10.0


def test_score_is_invariant_to_row_order(fitted, data):
    perm = np.random.default_rng(0).permutation(len(data))
    assert fitted.score(data[perm]) == pytest.approx(fitted.score(data), rel=1e-6)


# ---------------------------------------------------------------- training variants


def test_partial_fit_increments_n_iter(data_nan):
    imp = tiny_imputer()
    assert imp.partial_fit(data_nan) is imp
    assert imp.n_iter_ == 1
    imp.partial_fit(data_nan[:50])
    assert imp.n_iter_ == 2
    assert len(imp.loss_curve_) == 2
    assert "val_loss" not in imp.history_  # partial_fit holds no rows out
    assert np.all(np.isfinite(imp.transform(data_nan)))


def test_partial_fit_after_fit_continues(data_nan):
    imp = tiny_imputer().fit(data_nan)
    before = {k: v.clone() for k, v in imp.model_.state_dict().items()}
    imp.partial_fit(data_nan)
    assert imp.n_iter_ == 3
    after = imp.model_.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_warm_start_continues_training(data_nan):
    imp = tiny_imputer(warm_start=True).fit(data_nan)
    model = imp.model_
    imp.fit(data_nan)
    assert imp.n_iter_ == 4
    assert len(imp.loss_curve_) == 4
    assert imp.model_ is model
    cold = tiny_imputer(warm_start=False).fit(data_nan)
    first_model = cold.model_
    cold.fit(data_nan)
    assert cold.n_iter_ == 2
    assert cold.model_ is not first_model


def test_warm_start_with_other_width_raises_clearly_and_keeps_state(data_nan):
    imp = tiny_imputer(warm_start=True).fit(data_nan)
    with pytest.raises(ValueError, match="features"):
        imp.fit(data_nan[:, :3])
    assert imp.n_features_in_ == 4
    assert imp.transform(data_nan).shape == data_nan.shape


def test_warm_start_uses_the_current_max_iter(data_nan):
    imp = tiny_imputer(warm_start=True).fit(data_nan)
    imp.set_params(max_iter=3)
    imp.fit(data_nan)
    assert imp.n_iter_ == 2 + 3


def test_fit_on_complete_data(data):
    imp = tiny_imputer().fit(data)
    X = data[:10].copy()
    X[:, 1] = np.nan
    out = imp.transform(X)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("family", sorted(POSTERIOR_FAMILIES))
def test_every_posterior_family_fits_transforms_and_scores(family, data_nan, data):
    imp = tiny_imputer(posterior=family, max_iter=1).fit(data_nan[:60])
    out = imp.transform(data_nan[:60])
    observed = ~np.isnan(data_nan[:60])
    assert np.array_equal(out[observed], data_nan[:60][observed])
    assert np.all(np.isfinite(out))
    scores = imp.score_conditional(data[:5], np.eye(5, 4, dtype=bool))
    assert scores.shape == (5,) and np.all(np.isfinite(scores))


@pytest.mark.parametrize(
    "params",
    [
        {"training_mask": "uniform"},
        {"training_mask": "uniform", "observed_fraction": (0.0, 0.3)},
        {"kl_schedule": "cyclical"},
        {"stop_gradient": False, "pm_weight": 0.5},
        {"dropout": 0.0, "weight_decay": 0.0, "batch_size": 16, "hidden_layer_sizes": [8, 8]},
        {"device": "cpu"},
    ],
    ids=lambda p: ",".join(p),
)
def test_parameter_variants_work(params, data_nan):
    imp = tiny_imputer(**params).fit(data_nan[:60])
    assert np.all(np.isfinite(imp.transform(data_nan[:60])))
    assert all(np.all(np.isfinite(v)) for v in imp.history_.values())


def test_kl_schedule_is_recorded(data_nan):
    imp = tiny_imputer(kl_schedule="cyclical", max_iter=4).fit(data_nan[:40])
    assert imp.history_["kl_weight"] == [0.0, 1.0, 0.0, 1.0]
    imp = tiny_imputer(max_iter=2).fit(data_nan[:40])
    assert imp.history_["kl_weight"] == [1.0, 1.0]


def test_missing_values_marker_other_than_nan(data_nan):
    X = np.where(np.isnan(data_nan), -999.0, data_nan)
    imp = tiny_imputer(missing_values=-999.0).fit(X)
    out = imp.transform(X)
    assert not np.any(out == -999.0)
    assert np.array_equal(out[X != -999.0], X[X != -999.0])
    # NaN is not the marker here, so it is rejected
    with pytest.raises(ValueError):
        imp.transform(data_nan)


def test_bernoulli_likelihood(data_nan):
    rng = np.random.default_rng(0)
    X = (rng.random((80, 4)) < 0.5).astype(float)
    X[:, 0] = rng.random(80)  # fractional values in [0, 1] are allowed
    X_nan = with_missing(X)
    imp = tiny_imputer(likelihood="bernoulli").fit(X_nan)
    np.testing.assert_array_equal(imp.mean_, np.zeros(4))
    np.testing.assert_array_equal(imp.scale_, np.ones(4))
    out = imp.transform(X_nan)
    assert np.all((out >= 0) & (out <= 1))
    draws = imp.sample(X_nan, n_samples=3)
    missing = np.isnan(X_nan)
    assert set(np.unique(draws[:, missing])) <= {0.0, 1.0}
    assert np.all(np.isfinite(imp.score_conditional(X[:5], np.eye(5, 4, dtype=bool))))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        imp.transform(X_nan * 2)
    with pytest.raises(ValueError, match="bernoulli"):
        tiny_imputer(likelihood="bernoulli").fit(data_nan)


@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_a_cuda_device_carries_its_index(monkeypatch, name):
    # tensors made on "cuda" live on "cuda:N", and torch.device("cuda") != "cuda:0": without
    # the index every call would see a model on another device and move it again
    from afa._torch import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device(name) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises(data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        tiny_imputer(device="cuda").fit(data)


def test_auto_parameters_resolve(data_nan):
    imp = PosteriorMatchingImputer(max_iter=1, n_samples=4, random_state=0).fit(data_nan[:40])
    hp = imp.hyperparameters_
    assert set(hp) >= {
        "latent_dim",
        "hidden_layer_sizes",
        "dropout",
        "weight_decay",
        "batch_size",
        "max_iter",
    }
    assert "auto" not in hp.values()  # every "auto" is resolved
    assert hp["decoder_scale"] == "heteroscedastic"  # 40 rows: too few for a correlation
    assert isinstance(hp["latent_dim"], int) and hp["latent_dim"] >= 1
    assert isinstance(hp["hidden_layer_sizes"], tuple)
    assert all(isinstance(s, int) and s > 0 for s in hp["hidden_layer_sizes"])
    assert isinstance(hp["batch_size"], int) and hp["batch_size"] >= 1
    assert hp["max_iter"] == 1 and imp.n_iter_ == 1
    assert np.all(np.isfinite(imp.transform(data_nan[:40])))


def test_auto_decoder_follows_the_table_size(monkeypatch):
    import afa.impute._posterior_matching as posterior_matching

    monkeypatch.setattr(posterior_matching, "_MIN_CORRELATED_ROWS", 50)
    X = np.random.default_rng(0).normal(size=(60, 4))
    imp = PosteriorMatchingImputer(max_iter=1, n_samples=4, random_state=0).fit(X)
    assert imp.hyperparameters_["decoder_scale"] == "correlated"  # enough rows, 4 features
    monkeypatch.setattr(posterior_matching, "_MAX_CORRELATED_FEATURES", 3)
    imp.fit(X)
    assert imp.hyperparameters_["decoder_scale"] == "heteroscedastic"  # too wide
    assert (
        imp.set_params(decoder_scale="correlated").fit(X).hyperparameters_["decoder_scale"]
        == "correlated"
    )


def test_a_warm_start_trains_with_the_new_loss_settings(data_nan):
    imp = tiny_imputer(max_iter=2).fit(data_nan)
    assert imp.history_["pm"][-1] > 0
    imp.set_params(warm_start=True, pm_weight=0.0, training_mask="uniform").fit(data_nan)
    assert imp.history_["pm"][-2:] == [0.0, 0.0]  # the partial posterior is no longer trained
    assert imp.model_.training_mask == "uniform"


def _same_weights(a, b) -> bool:
    return all(
        torch.equal(weight, b.model_.state_dict()[name])
        for name, weight in a.model_.state_dict().items()
    )


def test_a_rejected_partial_fit_leaves_the_optimiser_as_it_was(data_nan):
    imp, twin = tiny_imputer(max_iter=4), tiny_imputer(max_iter=4)
    imp.partial_fit(data_nan)
    twin.partial_fit(data_nan)
    with pytest.raises(ValueError, match="features"):
        imp.partial_fit(data_nan[:, :3])
    imp.partial_fit(data_nan)
    twin.partial_fit(data_nan)
    assert _same_weights(imp, twin)


def test_a_fit_after_unpickling_does_not_resume_the_old_optimiser(data_nan):
    imp = tiny_imputer(max_iter=3)
    imp.partial_fit(data_nan)
    restored, fresh = _pickled(imp), tiny_imputer(max_iter=3)
    for estimator in (restored, fresh):
        estimator.fit(data_nan)
        estimator._trainer = None  # as after a failed call: the next partial_fit rebuilds it
        estimator.partial_fit(data_nan)
    assert _same_weights(restored, fresh)


def test_a_round_trip_keeps_the_schedules_position(data_nan):
    imp = tiny_imputer(max_iter=5, warm_start=True, kl_schedule="cyclical", early_stopping=False)
    imp.fit(data_nan).fit(data_nan)
    restored = _pickled(imp)
    imp.partial_fit(data_nan)
    restored.partial_fit(data_nan)
    for name in ("kl_weight", "learning_rate"):
        assert restored.history_[name] == imp.history_[name]
    assert _same_weights(restored, imp)


def test_a_pickle_from_before_observed_fraction_still_trains(data_nan):
    imp = tiny_imputer(max_iter=2).fit(data_nan)
    state = imp.__getstate__()
    del state["observed_fraction"]
    old = PosteriorMatchingImputer.__new__(PosteriorMatchingImputer)
    old.__setstate__(state)
    assert old.get_params()["observed_fraction"] == (0.0, 1.0)
    assert clone(old).get_params() == tiny_imputer(max_iter=2).get_params()
    old.partial_fit(data_nan)
    assert old.n_iter_ == 3


def test_bernoulli_decoder_reports_no_scale_and_warm_starts_across_scales():
    X = np.random.default_rng(0).random((40, 4))
    imp = PosteriorMatchingImputer(likelihood="bernoulli", max_iter=1, n_samples=4, random_state=0)
    assert imp.fit(X).hyperparameters_["decoder_scale"] is None
    # the scale does not change a Bernoulli model, so a warm start may follow a new value
    imp.set_params(warm_start=True, decoder_scale="correlated").fit(X)
    assert imp.n_iter_ == 2


def test_results_do_not_depend_on_inference_chunking(fitted, data_nan, data, monkeypatch):
    import afa.impute._posterior_matching as posterior_matching

    mask = np.random.default_rng(0).random(data[:30].shape) < 0.5
    expected = (
        fitted.transform(data_nan[:30]),
        fitted.sample(data_nan[:30], 3),
        fitted.score_conditional(data[:30], mask),
        fitted.score(data[:30]),
    )
    monkeypatch.setattr(posterior_matching, "NOISE_ELEMENTS_PER_CHUNK", 64)  # 2 rows per chunk
    chunked = (
        fitted.transform(data_nan[:30]),
        fitted.sample(data_nan[:30], 3),
        fitted.score_conditional(data[:30], mask),
        fitted.score(data[:30]),
    )
    for a, b in zip(expected, chunked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_sample_rows_are_independent(fitted, data_nan):
    draws = fitted.sample(data_nan[:12], 4)
    np.testing.assert_allclose(fitted.sample(data_nan[3:7], 4), draws[:, 3:7], rtol=1e-6, atol=1e-6)
    perm = np.random.default_rng(1).permutation(12)
    np.testing.assert_allclose(
        fitted.sample(data_nan[:12][perm], 4), draws[:, perm], rtol=1e-6, atol=1e-6
    )


def test_no_printing_and_verbose_progress_goes_to_stderr(data_nan, capsys):
    imp = tiny_imputer().fit(data_nan[:40])
    imp.transform(data_nan[:40])
    imp.score(np.nan_to_num(data_nan[:10]))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    verbose = tiny_imputer(verbose=True).fit(data_nan[:40])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch" in captured.err
    verbose.transform(data_nan[:40])
    verbose.score(np.nan_to_num(data_nan[:10]))
    assert capsys.readouterr() == ("", "")  # never a bar inside transform/score


def test_early_stopping_is_logged(data_nan, caplog):
    with caplog.at_level("INFO", logger="afa"):
        tiny_imputer(max_iter=10, tol=1e9, n_iter_no_change=1).fit(data_nan[:40])
    assert any("Early stopping" in r.getMessage() for r in caplog.records)


def test_nullable_dataframe_input(data_nan):
    frame = pd.DataFrame(data_nan, columns=["a", "b", "c", "d"]).astype("Float64")
    assert frame.isna().any().any()
    imp = tiny_imputer().fit(frame)
    out = imp.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert not out.isna().any().any()
    observed = frame.notna().to_numpy()
    assert np.array_equal(
        out.to_numpy(dtype=float)[observed], frame.to_numpy(dtype=float)[observed]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_transform_and_cpu_pickle(data_nan):
    imp = tiny_imputer(device="cuda").fit(data_nan)
    out = imp.transform(data_nan)
    observed = ~np.isnan(data_nan)
    assert np.array_equal(out[observed], data_nan[observed])
    assert np.all(np.isfinite(out))
    state = pickle.loads(pickle.dumps(imp)).__dict__
    assert next(state["model_"].parameters()).device.type == "cpu"
    assert next(imp.model_.parameters()).device.type == "cuda"  # the original stays put


# ---------------------------------------------------------------- persistence / composition


def test_pickle_round_trip(fitted, data_nan, data):
    restored = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(restored.transform(data_nan), fitted.transform(data_nan))
    mask = np.random.default_rng(0).random(data[:8].shape) < 0.5
    np.testing.assert_array_equal(
        restored.score_conditional(data[:8], mask), fitted.score_conditional(data[:8], mask)
    )
    assert np.array_equal(restored.sample(data_nan[:5], 2), fitted.sample(data_nan[:5], 2))
    assert next(restored.model_.parameters()).device.type == "cpu"
    # training can continue after unpickling
    restored.partial_fit(data_nan)
    assert restored.n_iter_ == fitted.n_iter_ + 1


def test_pickle_keeps_the_original_usable(data_nan):
    imp = tiny_imputer().fit(data_nan)
    pickle.dumps(imp)
    imp.partial_fit(data_nan)
    assert imp.n_iter_ == 3


def test_clone(fitted):
    cloned = clone(fitted)
    params, original = cloned.get_params(), fitted.get_params()
    assert params.keys() == original.keys()
    for name in params:
        assert params[name] is original[name] or params[name] == original[name], name
    assert not hasattr(cloned, "model_")
    assert not hasattr(cloned, "n_iter_")
    with pytest.raises(NotFittedError):
        cloned.transform(np.zeros((2, 4)))


def test_pipeline_with_downstream_regressor(data_nan, data):
    y = data @ np.array([1.0, -1.0, 0.5, 0.0])
    pipe = make_pipeline(tiny_imputer(), LinearRegression()).fit(data_nan, y)
    predictions = pipe.predict(data_nan)
    assert predictions.shape == (len(data_nan),)
    assert np.all(np.isfinite(predictions))


def test_grid_search_uses_score(data_nan):
    search = GridSearchCV(
        tiny_imputer(max_iter=1), {"latent_dim": [1, 2]}, cv=2, error_score="raise"
    ).fit(data_nan[:60])
    assert search.best_params_["latent_dim"] in (1, 2)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert isinstance(search.best_estimator_, PosteriorMatchingImputer)
    assert search.best_estimator_.n_features_in_ == 4


def _mean_cross_row_correlation(draws: np.ndarray) -> float:
    """Mean correlation, over the draws, between the imputations of different rows."""
    correlation = np.corrcoef(draws.T)
    n = correlation.shape[0]
    return float((correlation.sum() - n) / (n * (n - 1)))


def test_multiple_imputations_are_independent_across_rows(fitted, data):
    """Rubin's rules need independent draws per row: shared noise made them move together
    (a correlation of 0.97-1.0 across rows)."""
    X = data[:120].copy()
    X[:, 3] = np.nan
    draws = fitted.sample(X, 200)[:, :, 3]
    assert abs(_mean_cross_row_correlation(draws)) < 0.05
    np.testing.assert_array_equal(fitted.sample(X[5:7], 200)[:, 1, 3], draws[:, 6])


def test_neighbouring_sample_seeds_give_unrelated_draws(fitted, data):
    X = data[:300].copy()
    X[:, 3] = np.nan
    first, second = (fitted.sample(X, 1, random_state=seed)[0, :, 3] for seed in (0, 1))
    means = fitted.transform(X)[:, 3]
    assert abs(np.corrcoef(first - means, second - means)[0, 1]) < 0.15


def test_hyperparameters_report_the_dropout_actually_used(data_nan):
    single = tiny_imputer(hidden_layer_sizes=(8,), dropout=0.3).fit(data_nan)
    assert single.hyperparameters_["dropout"] == 0.0  # one layer: no residual block
    double = tiny_imputer(hidden_layer_sizes=(8, 8), dropout=0.3).fit(data_nan)
    assert double.hyperparameters_["dropout"] == 0.3
    assert any(isinstance(m, torch.nn.Dropout) for m in double.model_.modules())


def test_partial_fit_after_pickling_continues_the_learning_rate_schedule(data_nan):
    imp = tiny_imputer(max_iter=4, learning_rate_decay=0.5)
    for _ in range(3):
        imp.partial_fit(data_nan)
    restored = pickle.loads(pickle.dumps(imp))
    imp.partial_fit(data_nan)
    restored.partial_fit(data_nan)
    rates = imp.history_["learning_rate"]
    assert restored.history_["learning_rate"] == pytest.approx(rates)
    assert rates[3] < rates[0]


def _pickled(estimator):
    return pickle.loads(pickle.dumps(estimator))


@pytest.mark.parametrize("round_trip", [_pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_partial_fit_after_a_round_trip_trains_as_without_it(data_nan, round_trip):
    imp = tiny_imputer(max_iter=4)
    for _ in range(2):
        imp.partial_fit(data_nan)
    restored = round_trip(imp)
    imp.partial_fit(data_nan)
    restored.partial_fit(data_nan)
    # the same Adam moments, so the same step: weights equal to the last bit
    for name, weight in imp.model_.state_dict().items():
        torch.testing.assert_close(restored.model_.state_dict()[name], weight, rtol=0, atol=0)
