"""Tests of LookaheadAcquirer: choices, costs, budgets, groups, targets and episodes."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

from afa import AcquisitionPath, LookaheadAcquirer, PosteriorMatchingImputer
from afa.models.lookahead import variance_shares

D = 5
SETTINGS = settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def key_feature_data(n: int = 500, seed: int = 0) -> np.ndarray:
    """Column 0 determines the row; the others are noisy copies of it."""
    rng = np.random.default_rng(seed)
    key = rng.normal(size=(n, 1))
    noisy = key + 0.7 * rng.normal(size=(n, D - 1))
    return np.hstack([key, noisy]) * 3.0 + 1.0


def key_feature_imputer() -> PosteriorMatchingImputer:
    """Trained long and lightly regularised: gains are differences of posterior entropies,
    so they need a well-calibrated partial posterior (EDDI's target reward most of all)."""
    return PosteriorMatchingImputer(
        posterior="gaussian",
        latent_dim=1,
        hidden_layer_sizes=(32, 32),
        dropout=0.0,
        weight_decay=1e-4,
        max_iter=400,
        random_state=0,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids OpenMP wake-up latency (3x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def key_data() -> np.ndarray:
    return key_feature_data()


@pytest.fixture(scope="module")
def imputer(key_data) -> PosteriorMatchingImputer:
    return key_feature_imputer().fit(key_data)


@pytest.fixture(scope="module")
def acquirer(imputer, key_data) -> LookaheadAcquirer:
    return LookaheadAcquirer(
        imputer=imputer, criterion="entropy", max_iter=30, lookahead_samples=16, random_state=0
    ).fit(key_data)


def partial_rows(X: np.ndarray, rate: float = 0.3, seed: int = 1) -> np.ndarray:
    """Rows with some entries observed, column 0 always unobserved."""
    rng = np.random.default_rng(seed)
    partial = np.where(rng.random(X.shape) < rate, X, np.nan)
    partial[:, 0] = np.nan
    return partial


# ---------------------------------------------------------------------- choices
@pytest.mark.parametrize("strategy", ["sampling", "lookahead"])
def test_the_feature_that_determines_the_rest_is_chosen_first(acquirer, key_data, strategy):
    empty = np.full((1, D), np.nan)
    assert acquirer.acquire_next(empty, strategy=strategy)[0] == 0
    choices = acquirer.acquire_next(partial_rows(key_data[:100]), strategy=strategy)
    assert np.mean(choices == 0) >= 0.9


def test_random_strategy_spreads_its_choices(acquirer, key_data):
    choices = acquirer.acquire_next(partial_rows(key_data[:200]), strategy="random")
    assert len(np.unique(choices)) >= 4


def test_costs_change_the_order(acquirer):
    empty = np.full((1, D), np.nan)
    expensive_key = np.array([1000.0, 1.0, 1.0, 1.0, 1.0])
    for strategy in ("sampling", "lookahead"):
        assert acquirer.acquire_next(empty, strategy=strategy, costs=expensive_key)[0] != 0
        assert acquirer.acquire_next(empty, strategy=strategy, costs=np.ones(D))[0] == 0


def test_budget_excludes_unaffordable_actions(acquirer):
    empty = np.full((2, D), np.nan)
    costs = np.array([5.0, 1.0, 1.0, 1.0, 1.0])
    choice = acquirer.acquire_next(empty, strategy="sampling", costs=costs, budget=[2.0, 0.5])
    assert choice[0] in (1, 2, 3, 4)
    assert choice[1] == -1


def test_minus_one_exactly_when_nothing_is_left(acquirer, key_data):
    rows = key_data[:3].copy()
    rows[1, 2] = np.nan
    rows[2, :] = np.nan
    for strategy in ("lookahead", "sampling", "random"):
        choice = acquirer.acquire_next(rows, strategy=strategy)
        assert choice[0] == -1
        assert choice[1] == 2
        assert choice[2] >= 0


def test_stopping_rule_stops_when_gains_are_small(imputer, key_data):
    acq = LookaheadAcquirer(imputer=imputer, strategy="sampling", min_gain=1e6).fit(key_data)
    assert (acq.acquire_next(np.full((2, D), np.nan)) == -1).all()
    assert (acq.acquire_next(np.full((2, D), np.nan), strategy="random") >= 0).all()


def test_information_gain_shape_and_observed_entries(acquirer, key_data):
    rows = partial_rows(key_data[:20])
    for strategy in ("lookahead", "sampling"):
        gains = acquirer.information_gain(rows, strategy=strategy)
        assert gains.shape == rows.shape
        observed = ~np.isnan(rows)
        assert np.all(gains[observed] == -np.inf)
        assert np.all(np.isfinite(gains[~observed]))


@pytest.mark.parametrize("strategy", ["lookahead", "sampling"])
def test_gains_do_not_depend_on_the_batch(acquirer, key_data, strategy):
    rows = partial_rows(key_data[:12])
    together = acquirer.information_gain(rows, strategy=strategy)
    alone = np.vstack(
        [acquirer.information_gain(rows[i : i + 1], strategy=strategy) for i in range(12)]
    )
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- properties
@st.composite
def partial_batches(draw):
    n = draw(st.integers(1, 6))
    observed = draw(hnp.arrays(np.bool_, (n, D)))
    values = draw(hnp.arrays(np.float64, (n, D), elements=st.floats(-20, 20, allow_nan=False)))
    return np.where(observed, values, np.nan), observed


@SETTINGS
@given(batch=partial_batches(), strategy=st.sampled_from(["lookahead", "sampling", "random"]))
def test_never_acquires_an_observed_feature(acquirer, batch, strategy):
    rows, observed = batch
    choice = acquirer.acquire_next(rows, strategy=strategy)
    nothing_left = observed.all(axis=1)
    assert np.array_equal(choice == -1, nothing_left)
    picked = choice[~nothing_left]
    assert not observed[~nothing_left][np.arange(len(picked)), picked].any()


# ---------------------------------------------------------------------- episodes
def test_acquire_path_shapes_and_monotone_masks(acquirer, key_data):
    X = key_data[:8]
    path = acquirer.acquire(X, n_steps=3, strategy="lookahead")
    assert isinstance(path, AcquisitionPath)
    assert path.n_steps == 3
    assert path.order.shape == (8, 3)
    assert path.masks.shape == (4, 8, D)
    assert path.imputations.shape == (4, 8, D)
    assert path.errors.shape == (4, 8)
    assert not path.masks[0].any()
    assert np.all(path.masks[1:].sum(axis=2) == np.arange(1, 4)[:, None])
    assert np.all(path.masks[:-1] <= path.masks[1:])
    np.testing.assert_array_equal(path.spent[-1], 3.0)
    observed = path.masks[-1]
    np.testing.assert_array_equal(path.imputations[-1][observed], X[observed])
    assert np.all(np.isfinite(path.gains))


def test_acquire_runs_until_everything_is_observed(acquirer, key_data):
    X = key_data[:4]
    path = acquirer.acquire(X, strategy="random")
    assert path.n_steps == D
    assert path.masks[-1].all()
    np.testing.assert_allclose(path.errors[-1], 0.0)
    assert np.all(np.isnan(path.gains))
    assert path.mean_errors().shape == (D + 1,)


def test_greedy_episode_beats_random_on_the_key_feature_data(acquirer, key_data):
    X = key_data[-100:]
    greedy = acquirer.acquire(X, n_steps=1, strategy="lookahead").mean_errors()[1]
    random = acquirer.acquire(X, n_steps=1, strategy="random").mean_errors()[1]
    assert greedy < 0.9 * random  # the best possible ratio here is about 0.86


def test_acquire_respects_budget_and_initial_mask(acquirer, key_data):
    X = key_data[:5]
    initial = np.zeros_like(X, dtype=bool)
    initial[:, 0] = True
    costs = np.array([1.0, 2.0, 2.0, 2.0, 2.0])
    path = acquirer.acquire(X, budget=5.0, costs=costs, initial_mask=initial)
    assert path.masks[0][:, 0].all()
    assert np.all(path.spent[-1] <= 5.0)
    assert np.all(path.masks[-1].sum(axis=1) == 3)  # the key plus two paid features
    assert path.n_steps == 2  # then 1.0 is left, and every feature costs 2.0
    np.testing.assert_array_equal(path.spent[-1], 4.0)


# ---------------------------------------------------------------------- groups and target
def test_groups_are_acquired_together(imputer, key_data):
    acq = LookaheadAcquirer(imputer=imputer, groups=[[1, 3]], max_iter=3, random_state=0)
    acq.fit(key_data)
    assert acq.actions_ == [(0,), (1, 3), (2,), (4,)]
    path = acq.acquire(key_data[:6], n_steps=4, strategy="sampling")
    for step in range(4):
        revealed = path.masks[step + 1] & ~path.masks[step]
        grouped = path.order[:, step] == 1
        assert np.all(revealed[grouped][:, [1, 3]])
        assert np.all(revealed[grouped].sum(axis=1) == 2)
    assert acq.information_gain(np.full((2, D), np.nan)).shape == (2, 4)


def test_target_is_never_acquired_and_directs_acquisition(imputer, key_data):
    acq = LookaheadAcquirer(
        imputer=imputer,
        criterion="entropy",
        target=4,
        max_iter=80,
        lookahead_samples=16,
        random_state=0,
    ).fit(key_data)
    assert acq.actions_ == [(c,) for c in range(D)]  # action j is column j
    empty = np.full((1, D), np.nan)
    for strategy in ("sampling", "lookahead"):
        gains = acq.information_gain(empty, strategy=strategy)
        assert gains.shape == (1, D)
        assert gains[0, 4] == -np.inf
        assert np.argmax(gains[0]) == 0
    for strategy in ("sampling", "lookahead", "random"):
        assert acq.acquire_next(np.full((3, D), np.nan), strategy=strategy).max() < 4
    path = acq.acquire(key_data[:5], strategy="sampling")
    assert not path.masks[:, :, 4].any()
    assert path.target_errors.shape == (path.n_steps + 1, 5)
    with pytest.raises(ValueError, match="target column is observed"):
        acq.acquire_next(key_data[:2])


# ---------------------------------------------------------------------- variance criterion
def _random_covariance(n: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(n, d, d + 2, generator=generator, dtype=torch.float64)
    return factor @ factor.transpose(1, 2) / d


def test_variance_shares_match_the_gaussian_conditional():
    """G_a / tr C_TT equals the drop in the total conditional variance of the targets."""
    covariance = _random_covariance(3, 6, seed=0)
    actions = torch.tensor(
        [[1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool
    )
    columns = torch.ones(3, 6, dtype=torch.bool)
    shares = variance_shares(covariance, actions, columns)
    for row in range(3):
        full = covariance[row]
        for a, group in enumerate(actions):
            g = group.nonzero().squeeze(1)
            after = full - full[:, g] @ torch.linalg.solve(full[g][:, g], full[g, :])
            expected = 1 - after.trace() / full.trace()
            assert shares[row, a].item() == pytest.approx(expected.item(), abs=1e-6)


def test_variance_shares_ignore_observed_columns_and_follow_the_target():
    covariance = _random_covariance(1, 4, seed=1)
    observed = torch.tensor([[False, True, False, False]])
    kept = (~observed).double()
    covariance = covariance * kept.unsqueeze(-1) * kept.unsqueeze(-2)
    actions = torch.eye(4, dtype=torch.bool)
    shares = variance_shares(covariance, actions, ~observed)
    assert shares[0, 1].item() == 0.0  # an observed column explains nothing
    target = torch.tensor([[False, False, False, True]])
    to_target = variance_shares(covariance, actions, target)[0]
    c = covariance[0]
    assert to_target[3].item() == pytest.approx(1.0, abs=1e-5)
    expected = (c[0, 3] ** 2 / (c[0, 0] * c[3, 3])).item()
    assert to_target[0].item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def variance_acquirer(imputer, key_data) -> LookaheadAcquirer:
    return LookaheadAcquirer(
        imputer=imputer, criterion="variance", max_iter=60, random_state=0
    ).fit(key_data)


def exact_variance_shares(observed: np.ndarray) -> np.ndarray:
    """Each column's share of the error removed, under the true (Gaussian) law of the key
    data; NaN where observed."""
    covariance = np.full((D, D), 9.0)
    covariance[1:, 1:] += np.eye(D - 1) * 9.0 * 0.49
    shares = np.full(observed.shape, np.nan)
    for row, seen in enumerate(observed):
        o, u = np.flatnonzero(seen), np.flatnonzero(~seen)
        given = covariance[np.ix_(u, u)]
        if o.size:
            given = given - covariance[np.ix_(u, o)] @ np.linalg.solve(
                covariance[np.ix_(o, o)], covariance[np.ix_(o, u)]
            )
        shares[row, u] = (given**2).sum(0) / np.diag(given) / np.trace(given)
    return shares


@pytest.mark.parametrize("strategy", ["sampling", "lookahead"])
def test_variance_criterion_makes_nearly_exact_choices(variance_acquirer, key_data, strategy):
    """The chosen column removes nearly as much error, under the true law, as the best."""
    empty = np.full((1, D), np.nan)
    assert variance_acquirer.acquire_next(empty, strategy=strategy)[0] == 0
    rows = partial_rows(key_data[:100])
    choices = variance_acquirer.acquire_next(rows, strategy=strategy)
    exact = exact_variance_shares(~np.isnan(rows))
    chosen = exact[np.arange(len(rows)), choices]
    assert np.mean(chosen >= 0.9 * np.nanmax(exact, axis=1)) >= 0.9
    random_choice = np.nanmean(exact, axis=1)
    assert chosen.mean() > random_choice.mean() + 0.02


@pytest.mark.parametrize("strategy", ["lookahead", "sampling"])
def test_variance_gains_do_not_depend_on_the_batch(variance_acquirer, key_data, strategy):
    rows = partial_rows(key_data[:40], seed=3)
    together = variance_acquirer.information_gain(rows, strategy=strategy)
    alone = np.vstack(
        [variance_acquirer.information_gain(rows[i : i + 1], strategy) for i in range(0, 40, 7)]
    )
    np.testing.assert_allclose(together[::7], alone, rtol=1e-4, atol=1e-6)


def test_variance_target_gains_point_at_the_key_feature(imputer, key_data):
    acq = LookaheadAcquirer(
        imputer=imputer, strategy="sampling", criterion="variance", target=4
    ).fit(key_data)
    gains = acq.information_gain(np.full((1, D), np.nan))
    assert gains.shape == (1, D)
    assert gains[0, 4] == -np.inf
    assert np.argmax(gains[0]) == 0


def test_lookahead_refuses_another_criterion_than_it_was_trained_for(variance_acquirer):
    acq = clone(variance_acquirer)
    acq.__dict__.update(variance_acquirer.__dict__)
    acq.set_params(criterion="entropy")
    with pytest.raises(NotFittedError, match="trained for criterion='variance'"):
        acq.acquire_next(np.full((1, D), np.nan))
    assert acq.acquire_next(np.full((1, D), np.nan), strategy="sampling")[0] == 0


# ---------------------------------------------------------------------- imputer handling
def test_fitted_imputer_is_used_frozen(imputer, key_data):
    before = {k: v.clone() for k, v in imputer.model_.state_dict().items()}
    acq = LookaheadAcquirer(imputer=imputer, max_iter=2, random_state=0).fit(key_data)
    assert acq.imputer_ is imputer
    after = imputer.model_.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_unfitted_imputer_is_cloned_and_fitted(key_data):
    template = PosteriorMatchingImputer(latent_dim=1, hidden_layer_sizes=(8,), max_iter=2)
    acq = LookaheadAcquirer(imputer=template, strategy="random", random_state=0).fit(key_data)
    assert acq.imputer_ is not template
    assert not hasattr(template, "model_")
    assert acq.imputer_.n_features_in_ == D


def test_frozen_estimator_survives_clone(imputer, key_data):
    acq = clone(LookaheadAcquirer(imputer=FrozenEstimator(imputer), strategy="sampling"))
    acq.fit(key_data)
    assert acq.imputer_ is imputer


def test_transform_imputes_through_the_imputer(acquirer, imputer, key_data):
    rows = partial_rows(key_data[:10])
    np.testing.assert_array_equal(acquirer.transform(rows), imputer.transform(rows))


def test_pickle_round_trip_keeps_decisions(acquirer, key_data):
    rows = partial_rows(key_data[:10])
    restored = pickle.loads(pickle.dumps(acquirer))
    np.testing.assert_allclose(restored.information_gain(rows), acquirer.information_gain(rows))


# ---------------------------------------------------------------------- errors
def test_lookahead_needs_the_network(imputer, key_data):
    acq = LookaheadAcquirer(imputer=imputer, strategy="sampling").fit(key_data)
    assert acq.lookahead_ is None
    with pytest.raises(NotFittedError, match="lookahead network was not trained"):
        acq.acquire_next(np.full((1, D), np.nan), strategy="lookahead")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"strategy": "greedy"}, "strategy must be one of"),
        ({"head": "gaussian"}, "head must be one of"),
        ({"criterion": "mse"}, "criterion must be one of"),
        ({"groups": [[0, 1], [1, 2]]}, "disjoint"),
        ({"groups": [0, 1]}, "sequence of sequences"),
        ({"target": 7}, "out of range"),
        ({"costs": [1.0, 2.0]}, "one entry per action"),
        ({"costs": [1.0, -1.0, 1.0, 1.0, 1.0]}, "finite and positive"),
        ({"observed_fraction": (0.5, 0.2)}, "observed_fraction"),
        ({"observed_fraction": (0.5,)}, "observed_fraction"),
        ({"imputer": "pm"}, "PosteriorMatchingImputer"),
        ({"min_gain": float("nan")}, "min_gain must be None or a finite number"),
        ({"min_gain": True}, "min_gain must be None or a finite number"),
        ({"min_gain": "0.1"}, "min_gain must be None or a finite number"),
        ({"hidden_layer_sizes": ()}, "hidden_layer_sizes must be"),
        ({"hidden_layer_sizes": (8, 0)}, "hidden_layer_sizes must be"),
        ({"costs": {"x": 1.0}}, "costs: unknown column 'x'"),
        ({"costs": {0: 1.0, 1: 2.0}}, r"no entry for the actions \(2\), \(3\), \(4\)"),
        ({"costs": ["a", 1.0, 1.0, 1.0, 1.0]}, "costs must be numbers"),
    ],
)
def test_bad_parameters_raise_clear_errors(imputer, key_data, params, message):
    params = {"imputer": imputer, "strategy": "sampling", **params}
    with pytest.raises(ValueError, match=message):
        LookaheadAcquirer(**params).fit(key_data)


def test_bad_inputs_raise_clear_errors(acquirer, key_data):
    with pytest.raises(ValueError, match="NaN"):
        acquirer.acquire(partial_rows(key_data[:3]))
    with pytest.raises(ValueError, match="features"):
        acquirer.acquire_next(np.full((1, D + 1), np.nan))
    with pytest.raises(ValueError, match="initial_mask has shape"):
        acquirer.acquire(key_data[:3], initial_mask=np.zeros((2, D), bool))
    with pytest.raises(ValueError, match="budget"):
        acquirer.acquire_next(np.full((1, D), np.nan), budget=-1.0)
    with pytest.raises(ValueError, match=r"one value per row \(2\); got shape \(3,\)"):
        acquirer.acquire_next(np.full((2, D), np.nan), budget=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"X_full must be complete.*\[0, 1, 2\]"):
        acquirer.acquire(partial_rows(key_data[:3]))
    with pytest.raises(ValueError, match="random' has no information gain"):
        acquirer.information_gain(np.full((1, D), np.nan), strategy="random")


def _named_frame(key_data) -> pd.DataFrame:
    return pd.DataFrame(key_data, columns=["key", "a", "b", "c", "diagnosis"])


@pytest.fixture(scope="module")
def named_acquirer(key_data) -> LookaheadAcquirer:
    """Columns by name: "a" and "c" acquired together, "diagnosis" the target."""
    return LookaheadAcquirer(
        imputer=PosteriorMatchingImputer(latent_dim=1, hidden_layer_sizes=(8,), max_iter=2),
        strategy="sampling",
        groups=[["a", "c"]],
        target="diagnosis",
        random_state=0,
    ).fit(_named_frame(key_data))


@pytest.mark.filterwarnings("error::UserWarning")  # no "X does not have valid feature names"
def test_column_names_for_target_and_groups(imputer, key_data, named_acquirer):
    frame, acq = _named_frame(key_data), named_acquirer
    assert acq.target_index_ == 4
    assert acq.actions_ == [(0,), (1, 3), (2,), (4,)]
    path = acq.acquire(frame.iloc[:3], n_steps=2)
    assert path.imputations.shape == (3, 3, D)
    assert isinstance(acq.transform(frame.iloc[:3]), pd.DataFrame)
    with pytest.raises(ValueError, match="unknown column 'age'"):
        LookaheadAcquirer(imputer=imputer, strategy="sampling", target="age").fit(frame)


def test_a_negative_gain_is_not_improved_by_a_higher_cost(acquirer, monkeypatch):
    """Negative estimates (possible for "entropy") are multiplied by the cost: a large cost
    must not shrink a negative gain into the best score."""
    gains = np.array([[-0.27, -2.74, -0.47, -np.inf, -np.inf], [0.4, 0.3, -0.1, 0.2, -np.inf]])
    monkeypatch.setattr(acquirer, "_gains", lambda X, observed, strategy: gains)
    costs = np.array([1000.0, 2.0, 1.0, 1.0, 1.0])
    choice = acquirer.acquire_next(np.full((2, D), np.nan), strategy="sampling", costs=costs)
    assert choice.tolist() == [2, 3]  # row 1: 0.2 per unit cost beats 0.15 and 0.0004
    unit = acquirer.acquire_next(np.full((2, D), np.nan), strategy="sampling", costs=np.ones(D))
    assert unit.tolist() == [0, 0]  # unit costs: the largest gain, negative or not


def test_costs_keyed_by_column_match_the_array(key_data, named_acquirer):
    frame, acq = _named_frame(key_data), named_acquirer
    partial = frame.iloc[:6].where(np.random.default_rng(0).random((6, D)) < 0.3)
    partial["diagnosis"] = np.nan
    array = np.array([4.0, 1.0, 3.0, 99.0])  # actions (key), (a, c), (b), (diagnosis)
    by_name = pd.Series({"b": 3.0, "key": 4.0, "c": 1.0})  # a group by any one column
    expected = acq.acquire_next(partial, costs=array)
    assert acq.acquire_next(partial, costs=by_name).tolist() == expected.tolist()
    assert acq.acquire_next(partial, costs=dict(by_name)).tolist() == expected.tolist()
    by_index = {0: 4.0, 1: 1.0, 2: 3.0}
    assert acq.acquire_next(partial, costs=by_index).tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"action \(a, c\) two costs"):
        acq.acquire_next(partial, costs={"key": 4.0, "a": 1.0, "c": 1.0, "b": 3.0})


def test_an_imputer_fitted_on_other_columns_is_refused(key_data):
    names = ["key", "a", "b", "c", "d"]
    frame = pd.DataFrame(key_data, columns=names)
    imputer = PosteriorMatchingImputer(latent_dim=1, hidden_layer_sizes=(8,), max_iter=2)
    imputer.fit(frame)
    with pytest.raises(ValueError, match="columns differ from those the imputer"):
        LookaheadAcquirer(imputer=imputer, strategy="sampling").fit(frame[names[::-1]])


def test_an_imputer_with_another_missing_marker_is_refused(key_data):
    imputer = PosteriorMatchingImputer(
        missing_values=-1.0, latent_dim=1, hidden_layer_sizes=(8,), max_iter=2
    )
    with pytest.raises(ValueError, match="missing_values=-1.0 is not supported"):
        LookaheadAcquirer(imputer=imputer, strategy="sampling").fit(key_data)


def test_groups_may_be_a_numpy_array(imputer, key_data):
    acq = LookaheadAcquirer(imputer=imputer, strategy="sampling", groups=np.array([[1, 3]]))
    assert acq.fit(key_data).actions_ == [(0,), (1, 3), (2,), (4,)]


def test_lookahead_training_needs_a_row_beyond_the_validation_split(imputer, key_data):
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        LookaheadAcquirer(imputer=imputer, max_iter=1).fit(key_data[:1])


@pytest.mark.parametrize("criterion", ["variance", "entropy"])
def test_lookahead_training_replays_a_batch_without_new_draws(imputer, key_data, criterion):
    from afa.models.lookahead import AcquisitionProblem, LookaheadNetwork, LookaheadObjective

    problem = AcquisitionProblem(torch.eye(D, dtype=torch.bool))
    network = LookaheadNetwork(D, 1, D, problem.n_scenarios, (8,))
    objective = LookaheadObjective(network, imputer.model_, problem, 8, 3, (0.0, 0.5), criterion)
    x, present = imputer._tensors(key_data[:32], np.ones((32, D), dtype=bool))
    generator = torch.Generator().manual_seed(0)
    loss, _ = objective.loss(x, present, generator)
    # the same targets (no new draws): the same loss while the network is unchanged
    torch.testing.assert_close(objective.replay(), loss, rtol=0, atol=0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1)
    assert not torch.equal(objective.replay(), loss)
    objective.eval()  # a validation batch is not kept for replays
    objective.loss(x, present, generator)
    with pytest.raises(RuntimeError, match="training batch"):
        objective.replay()


def test_variance_training_states_follow_the_networks_own_greedy_paths(imputer, monkeypatch):
    from afa.models.lookahead import AcquisitionProblem, LookaheadNetwork, LookaheadObjective

    problem = AcquisitionProblem(torch.eye(D, dtype=torch.bool))
    network = LookaheadNetwork(D, 1, D, problem.n_scenarios, (8,))
    preference = torch.tensor([3, 1, 4, 0, 2])  # the order the network would acquire in
    scores = torch.empty(D)
    scores[preference] = torch.arange(D, 0, -1, dtype=torch.float32)
    monkeypatch.setattr(network, "relative_gains", lambda x, state: scores.expand(len(x), D))
    objective = LookaheadObjective(network, imputer.model_, problem, 8, 3, (0.0, 1.0), "variance")
    present = torch.ones(400, D, dtype=torch.bool)
    present[:100, 1] = False  # column 1 missing: the path goes on without it
    states = objective._own_path_states(torch.zeros(400, D), present, torch.Generator())
    for row, state in enumerate(states):
        order = preference[preference != 1] if row < 100 else preference
        count = int(state.sum())
        assert set(torch.nonzero(state).flatten().tolist()) == set(order[:count].tolist())
    assert set(states[100:].sum(1).tolist()) == set(range(D + 1))  # every length, 0 to all
    objective.observed_fraction = (0.5, 0.5)  # no whole number of steps: the next one up
    states = objective._own_path_states(torch.zeros(50, D), present[100:150], torch.Generator())
    assert set(states.sum(1).tolist()) == {3}


def test_own_greedy_paths_rank_actions_by_gain_per_unit_cost(imputer, monkeypatch):
    from afa.models.lookahead import AcquisitionProblem, LookaheadNetwork, LookaheadObjective

    problem = AcquisitionProblem(torch.eye(D, dtype=torch.bool))
    network = LookaheadNetwork(D, 1, D, problem.n_scenarios, (8,))
    gains = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    monkeypatch.setattr(network, "relative_gains", lambda x, state: gains.expand(len(x), D))
    costs = torch.tensor([10.0, 1.0, 1.0, 2.0, 0.5])  # per unit: 0.5, 4, 3, 1, 2
    objective = LookaheadObjective(
        network, imputer.model_, problem, 8, 3, (0.0, 1.0), "variance", costs
    )
    states = objective._own_path_states(
        torch.zeros(200, D), torch.ones(200, D, dtype=torch.bool), torch.Generator()
    )
    order = [1, 2, 4, 3, 0]
    for state in states:
        assert set(torch.nonzero(state).flatten().tolist()) == set(order[: int(state.sum())])
    # equal gains per unit cost: the cheaper action first, as acquisition decides
    tied = LookaheadObjective(
        network, imputer.model_, problem, 8, 3, (0.2, 0.2), "variance", gains * 2
    )
    states = tied._own_path_states(
        torch.zeros(5, D), torch.ones(5, D, dtype=torch.bool), torch.Generator()
    )
    assert states[:, 4].all() and states.sum() == 5


def test_acquirer_trains_the_variance_network_on_paths_under_its_costs(
    imputer, key_data, monkeypatch
):
    import afa.acquisition

    seen = []

    class Recording(afa.acquisition.LookaheadObjective):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.costs)

    monkeypatch.setattr(afa.acquisition, "LookaheadObjective", Recording)
    costs = [1.0, 2.0, 3.0, 4.0, 0.5]
    LookaheadAcquirer(imputer=imputer, costs=costs, max_iter=1, random_state=0).fit(key_data)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.tensor(costs))


def test_column_counts_are_the_same_with_and_without_the_one_column_shortcut():
    from afa.models.lookahead import AcquisitionProblem

    state = torch.rand(20, 6) < 0.4
    identity = AcquisitionProblem(torch.eye(6, dtype=torch.bool))
    permuted = AcquisitionProblem(torch.eye(6, dtype=torch.bool)[[1, 0, 2, 3, 4, 5]])
    grouped = AcquisitionProblem(
        torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.bool)
    )
    assert identity.one_column_each and not permuted.one_column_each
    assert not grouped.one_column_each
    for problem in (identity, permuted, grouped):
        expected = (state.unsqueeze(1) & problem.actions).sum(-1).float()
        torch.testing.assert_close(problem.count_columns(state), expected)
        unobserved = ((~state).unsqueeze(1) & problem.actions).any(-1)
        assert torch.equal(problem.available(state), unobserved)
