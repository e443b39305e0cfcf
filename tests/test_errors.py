"""Bad input gets a clear ValueError naming the problem (DESIGN.md section 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_imputer
from sklearn.exceptions import NotFittedError

from afa import PosteriorMatchingImputer


def test_wrong_width_at_transform(fitted, data_nan):
    with pytest.raises(ValueError, match="X has 3 features.*expecting 4 features"):
        fitted.transform(data_nan[:, :3])
    with pytest.raises(ValueError, match="expecting 4 features"):
        fitted.sample(data_nan[:, :3])
    with pytest.raises(ValueError, match="expecting 4 features"):
        fitted.score(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="expecting 4 features"):
        fitted.score_conditional(np.zeros((3, 5)), np.ones((3, 5), dtype=bool))


def test_wrong_width_at_partial_fit(fitted, data_nan):
    imp = tiny_imputer().partial_fit(data_nan)
    with pytest.raises(ValueError, match="expecting 4 features"):
        imp.partial_fit(data_nan[:, :3])


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_inf_in_fit(data, value):
    X = data.copy()
    X[3, 1] = value
    with pytest.raises(ValueError, match="infinity"):
        tiny_imputer().fit(X)


def test_inf_in_transform_and_scoring(fitted, data):
    X = data[:5].copy()
    X[0, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        fitted.transform(X)
    with pytest.raises(ValueError, match="infinity"):
        fitted.score(X)
    with pytest.raises(ValueError, match="infinity"):
        fitted.score_conditional(X, np.ones((5, 4), dtype=bool))
    with pytest.raises(ValueError, match="infinity"):
        fitted.sample(X)


def test_all_nan_column_in_fit_names_the_column(data):
    X = data.copy()
    X[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"Columns \['2'\] have no observed values"):
        tiny_imputer().fit(X)
    frame = pd.DataFrame(X, columns=["age", "bmi", "glucose", "bp"])
    with pytest.raises(ValueError, match=r"\['glucose'\]"):
        tiny_imputer().fit(frame)
    with pytest.raises(ValueError, match=r"\['glucose'\]"):
        tiny_imputer().partial_fit(frame)


def test_training_row_with_nothing_observed_names_the_row(data, fitted):
    X = data.copy()
    X[7] = np.nan
    with pytest.raises(ValueError, match=r"rows \[7\].*no observed values"):
        tiny_imputer().fit(X)
    X[11] = np.nan
    with pytest.raises(ValueError, match=r"\[7, 11\]"):
        tiny_imputer().fit(X)
    imp = tiny_imputer().partial_fit(data)
    with pytest.raises(ValueError, match=r"\[7, 11\]"):
        imp.partial_fit(X)


def test_non_numeric_dataframe_column(data):
    frame = pd.DataFrame(data, columns=["a", "b", "c", "d"])
    frame["colour"] = ["red", "blue"] * (len(frame) // 2)
    with pytest.raises(ValueError, match=r"Non-numeric columns \['colour'\]"):
        tiny_imputer().fit(frame)


def test_non_numeric_dataframe_column_at_transform(data):
    frame = pd.DataFrame(data, columns=["a", "b", "c", "d"])
    imp = tiny_imputer().fit(frame)
    bad = frame.head(4).astype({"c": object})
    bad["c"] = ["x", "y", "z", "w"]
    with pytest.raises(ValueError, match=r"\['c'\]"):
        imp.transform(bad)


def test_dataframe_columns_in_another_order(data):
    imp = tiny_imputer().fit(pd.DataFrame(data, columns=["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="same order"):
        imp.transform(pd.DataFrame(data, columns=["b", "a", "c", "d"]))


def test_observed_mask_wrong_shape(fitted, data):
    with pytest.raises(ValueError, match=r"observed_mask has shape \(5, 3\)"):
        fitted.score_conditional(data[:5], np.ones((5, 3), dtype=bool))
    with pytest.raises(ValueError, match="observed_mask has shape"):
        fitted.score_conditional(data[:5], np.ones((4, 4), dtype=bool))


def test_observed_mask_not_boolean(fitted, data):
    with pytest.raises(ValueError, match="observed_mask must be boolean"):
        fitted.score_conditional(data[:5], np.full((5, 4), 0.5))


def test_nan_in_score_conditional_names_the_rows(fitted, data):
    X = data[:6].copy()
    X[4, 0] = np.nan
    with pytest.raises(ValueError, match=r"complete rows.*\[4\]"):
        fitted.score_conditional(X, np.ones((6, 4), dtype=bool))


def test_bad_n_samples_in_score_conditional(fitted, data):
    with pytest.raises(ValueError, match="n_samples"):
        fitted.score_conditional(data[:5], np.ones((5, 4), dtype=bool), n_samples=0)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"posterior": "nope"}, "posterior must be one of"),
        ({"likelihood": "poisson"}, "likelihood must be one of"),
        ({"training_mask": "random"}, "training_mask must be one of"),
        ({"training_mask": "uniform", "observed_fraction": (0.5, 0.2)}, "observed_fraction"),
        ({"training_mask": "uniform", "observed_fraction": 0.2}, "observed_fraction"),
        ({"observed_fraction": (0.0, 0.2)}, "bounds the 'uniform' training masks"),
        ({"kl_schedule": "linear"}, "kl_schedule must be one of"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"latent_dim": 2.5}, "latent_dim must be a positive integer"),
        ({"latent_dim": True}, "latent_dim must be a positive integer"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"max_iter": "forever"}, "max_iter must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
        ({"n_iter_no_change": 0}, "n_iter_no_change must be a positive integer"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be"),
        ({"hidden_layer_sizes": ()}, "hidden_layer_sizes must be"),
        ({"hidden_layer_sizes": 8}, "hidden_layer_sizes must be"),
        ({"hidden_layer_sizes": (8, -2)}, "hidden_layer_sizes must be"),
        ({"validation_fraction": 1.5}, "validation_fraction must lie in"),
        ({"validation_fraction": 0.0}, "validation_fraction must lie in"),
        ({"learning_rate_decay": 0.0}, "learning_rate_decay must lie in"),
        ({"learning_rate_init": 0.0}, "learning_rate_init must be positive"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a positive number or None"),
        ({"max_grad_norm": True}, "max_grad_norm must be a positive number or None"),
        ({"device": "tpu"}, "device must be"),
        ({"dropout": "high"}, "dropout must be 'auto' or a number in"),
        ({"dropout": 1.0}, "dropout must be 'auto' or a number in"),
        ({"weight_decay": -1.0}, "weight_decay must be 'auto' or a number >= 0"),
        ({"weight_decay": "x"}, "weight_decay must be 'auto' or a number >= 0"),
        ({"pm_weight": -1.0}, "pm_weight must be a finite number >= 0"),
        ({"tol": float("nan")}, "tol must be a finite number >= 0"),
        ({"tol": -1.0}, "tol must be a finite number >= 0"),
        ({"n_samples": True}, "n_samples must be a positive integer"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_invalid_parameters(params, fragment, data):
    with pytest.raises(ValueError, match=fragment):
        tiny_imputer(**params).fit(data[:20])
    with pytest.raises(ValueError, match=fragment):
        tiny_imputer(**params).partial_fit(data[:20])


@pytest.mark.parametrize("method", ["transform", "sample", "score"])
def test_not_fitted(method, data):
    with pytest.raises(NotFittedError):
        getattr(PosteriorMatchingImputer(), method)(data)


def test_not_fitted_score_conditional(data):
    with pytest.raises(NotFittedError):
        PosteriorMatchingImputer().score_conditional(data, np.ones(data.shape, dtype=bool))


def test_too_few_rows(data):
    with pytest.raises(ValueError, match="at least 2 rows"):
        tiny_imputer().fit(data[:1])


def test_one_dimensional_input(fitted, data):
    with pytest.raises(ValueError, match="2D array"):
        tiny_imputer().fit(data[:, 0])
    with pytest.raises(ValueError, match="2D array"):
        fitted.transform(data[0])


def test_empty_input(fitted):
    with pytest.raises(ValueError, match="0 sample"):
        fitted.transform(np.empty((0, 4)))


def test_bernoulli_values_outside_unit_interval(data):
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]"):
        tiny_imputer(likelihood="bernoulli").fit(data)


def test_training_divergence_raises(data):
    from afa.exceptions import TrainingDivergedError

    X = data.copy()
    with pytest.raises(TrainingDivergedError, match="learning_rate_init"):
        tiny_imputer(learning_rate_init=1e30, early_stopping=False, max_iter=3).fit(X)


def test_n_samples_changed_after_fit_is_checked(data, data_nan):
    imp = tiny_imputer().fit(data)
    imp.set_params(n_samples=0)
    with pytest.raises(ValueError, match="n_samples must be a positive integer; got 0"):
        imp.transform(data_nan[:3])
    with pytest.raises(ValueError, match="n_samples must be a positive integer; got 0"):
        imp.score(data[:3])


def test_values_beyond_float32_are_refused_by_row(fitted, data_nan):
    X = data_nan[:4].copy()
    X[2, 0] = 1e39
    with pytest.raises(ValueError, match=r"Rows \[2\].*float32"):
        fitted.transform(X)


def test_sample_seed_of_a_wrong_type(fitted, data_nan):
    np.testing.assert_array_equal(
        fitted.sample(data_nan[:3], 2, random_state=np.int64(4)),
        fitted.sample(data_nan[:3], 2, random_state=4),
    )
    with pytest.raises(ValueError, match="random_state must be None, an integer"):
        fitted.sample(data_nan[:3], 2, random_state=1.5)


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_failed_fit_leaves_the_previous_model(data_nan, warm_start):
    from afa.exceptions import TrainingDivergedError

    imp = tiny_imputer(warm_start=warm_start).fit(data_nan)
    before, epochs = imp.transform(data_nan), imp.n_iter_
    with pytest.raises(TrainingDivergedError):
        imp.set_params(learning_rate_init=1e30, early_stopping=False).fit(data_nan)
    np.testing.assert_array_equal(imp.transform(data_nan), before)
    assert imp.n_iter_ == epochs and len(imp.history_["loss"]) == epochs
    with pytest.raises(TrainingDivergedError):
        tiny_imputer(learning_rate_init=1e30, early_stopping=False).partial_fit(data_nan)


def test_a_failed_first_fit_leaves_the_estimator_unfitted(data_nan):
    from afa.exceptions import TrainingDivergedError

    imp = tiny_imputer(learning_rate_init=1e30, early_stopping=False)
    with pytest.raises(TrainingDivergedError):
        imp.fit(data_nan)
    with pytest.raises(NotFittedError):
        imp.transform(data_nan)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"latent_dim": 3}, "latent_dim=3"), ({"posterior": "flow"}, "posterior='flow'")],
)
def test_warm_start_refuses_a_different_architecture(data_nan, change, fragment):
    imp = tiny_imputer(warm_start=True).fit(data_nan)
    with pytest.raises(ValueError, match=f"cannot take {fragment}"):
        imp.set_params(**change).fit(data_nan)
    with pytest.raises(ValueError, match=f"cannot take {fragment}"):
        imp.partial_fit(data_nan)


def test_float32_columns_with_a_huge_spread_get_float64_statistics(data):
    X = (data * 1e30).astype(np.float32)  # their standard deviation overflows float32
    imp = tiny_imputer().fit(X)
    assert np.isfinite(imp.scale_).all()
    hidden = X.copy()
    hidden[:5, 1] = np.nan
    assert np.isfinite(imp.transform(hidden)).all()
