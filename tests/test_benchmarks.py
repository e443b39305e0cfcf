"""The UCI benchmark's protocol helpers, on synthetic data (the staged data is not needed)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.impute import SimpleImputer

from benchmarks import uci


@pytest.fixture
def split() -> uci.Split:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(700, 3)) @ np.array([[1.0, 0.9, 0.5], [0.0, 0.4, 0.3], [0, 0, 0.2]])
    return uci.Split(
        name="power",
        train=rows[:500],
        selection=rows[500:600],
        selection_train=rows[:500],
        test=rows[600:],
        train_source="train",
    )


def test_trial_masks_are_bernoulli_half_and_the_same_on_every_call():
    first, second = uci.trial_masks((2000, 10), 5), uci.trial_masks((2000, 10), 5)
    assert len(first) == 5
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
        assert abs(a.mean() - 0.5) < 0.01
    assert not np.array_equal(first[0], first[1])  # a fresh mask per trial


def test_evaluate_records_every_trial_and_the_per_row_costs(split):
    masks = uci.trial_masks(split.test.shape, 3)
    record = uci.evaluate("mean", SimpleImputer(), split.train, split, masks, {})
    assert len(record["nrmse"]) == 3 and record["ll"] is None
    assert all(0.5 < value < 2.0 for value in record["nrmse"])
    assert record["impute_seconds_per_1000_rows"] >= 0
    gaussian = uci.evaluate("Gaussian", uci.GaussianImputer(), split.train, split, masks, {})
    assert len(gaussian["ll"]) == 3
    assert np.mean(gaussian["nrmse"]) < np.mean(record["nrmse"])


def test_mixture_selection_prefers_more_components_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.choice([-4.0, 0.0, 4.0], size=(900, 1)) * np.ones((1, 2))
    rows = centres + 0.3 * rng.normal(size=(900, 2))
    clustered = uci.Split("power", rows[:600], rows[600:800], rows[:600], rows[800:], "train")
    _, notes = uci.select_mixture(clustered, (1, 3))
    assert notes["n_components"] == 3


def test_training_row_selection_reports_both_variants(split):
    rows, notes = uci.select_training_rows(SimpleImputer(), split, max_rows=200)
    assert set(notes["selection_nrmse"]) == {"complete rows", "masked rows"}
    assert len(rows) == notes["rows"] == 200
    assert np.isnan(rows).any() == (notes["fitted_on"] == "masked rows")


def test_markdown_has_caveats_and_published_rows(split):
    masks = uci.trial_masks(split.test.shape, 2)
    record = {
        "settings": {"trials": 2, "n_samples": 512},
        "hardware": {"device": "cpu", "torch_threads": 2},
        "wall_seconds": 60.0,
        "datasets": [
            {
                "name": "power",
                "caveat": uci.CAVEATS["power"],
                "train_split": "train",
                "train_rows": 500,
                "test_rows": 100,
                "features": 3,
                "results": [uci.evaluate("mean", SimpleImputer(), split.train, split, masks, {})],
                "published": {k: list(v) for k, v in uci.PUBLISHED["power"].items()},
            }
        ],
    }
    table = uci.to_markdown(record)
    assert uci.CAVEATS["power"] in table
    assert "| PM, published (official splits) | 0.834 ± 0.001 | 0.246 ± 0.002 |" in table
    assert "| mean |" in table


def test_quick_settings_parse_and_override():
    settings, _, threads, name = uci.parse_settings(["--quick", "--datasets", "power"])
    assert settings.datasets == ("power",) and name == "uci_quick" and threads == 2
    assert settings.n_samples == 512 and settings.trials == 5
    full, *_ = uci.parse_settings(["--n-samples", "100"])
    assert full.n_samples == 100 and full.posteriors == uci.POSTERIORS


def test_acquisition_table_reports_curves_and_speed_ratios(tmp_path):
    from benchmarks import acquisition

    settings = acquisition.Settings(train_rows=100, test_rows=4, n_steps=10)
    results = {
        "lookahead (entropy)": {
            "rmse": list(np.linspace(0.3, 0.2, 11)),
            "decision_s_per_step": 0.01,
        },
        "sampling": {"rmse": list(np.linspace(0.3, 0.19, 11)), "decision_s_per_step": 2.0},
        "random": {"rmse": list(np.linspace(0.3, 0.25, 11)), "decision_s_per_step": 0.001},
    }
    record = {
        "timings": {
            "imputer_fit_s": 1,
            "imputer_epochs": 2,
            "lookahead_fit_s": 3,
            "lookahead_epochs": 4,
        },
        "hardware": {"device": "cpu", "torch_threads": 2},
    }
    table = acquisition.markdown_table(results, settings, record)
    assert "| lookahead (entropy) | 0.3000 | 0.2500 | 0.2000 | 0.01 | 200x |" in table
    assert "| random |" in table and "| 0.001 | - |" in table
    acquisition.plot(results, settings, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
