"""The UCI benchmark's protocol helpers, on synthetic data (the staged data is not needed)."""

from __future__ import annotations

import re

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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-train-rows", "-5"], "--max-train-rows: must be a positive integer"),
        (["--threads", "0"], "--threads: must be a positive integer"),
        (["--device", "tpu"], "--device: device must be"),
        (["--pm-params", '{"posterior": "flow"}'], r"\['posterior'\] are set by the benchmark"),
        (["--pm-params", "[1]"], "must be a JSON object"),
    ],
)
def test_bad_benchmark_arguments_stop_at_parsing(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        uci.parse_settings(argv)
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _acquisition_record(settings) -> dict:
    """A run record with made-up fit times: the entropy network 3 s (4 epochs), the variance
    network 5 s (6 epochs), for the criteria in ``settings``."""
    timings = {"imputer_fit_s": 1, "imputer_epochs": 2}
    for criterion, (seconds, epochs) in {"entropy": (3, 4), "variance": (5, 6)}.items():
        if criterion in settings.criteria:
            timings[f"lookahead_{criterion}_fit_s"] = seconds
            timings[f"lookahead_{criterion}_epochs"] = epochs
    return {"timings": timings, "hardware": {"device": "cpu", "torch_threads": 2}}


def test_acquisition_table_reports_curves_and_speed_ratios(tmp_path):
    from benchmarks import acquisition

    settings = acquisition.Settings(train_rows=100, test_rows=4, n_steps=10)

    def curve(criterion: str, end: float, seconds: float) -> dict:
        rmse = list(np.linspace(0.3, end, 11))
        return {"criterion": criterion, "rmse": rmse, "decision_s_per_step": seconds}

    results = {
        "lookahead (entropy)": curve("entropy", 0.2, 0.01),
        "sampling (entropy)": curve("entropy", 0.19, 2.0),
        "lookahead (variance)": curve("variance", 0.15, 0.01),
        "sampling (variance)": curve("variance", 0.15, 0.05),
        "random": curve("entropy", 0.25, 0.001),
    }
    table = acquisition.markdown_table(results, settings, _acquisition_record(settings))
    assert (
        "| lookahead (entropy) | 0.3000 | 0.2500 | 0.2000 | 0.800 | 0.01 | 200x | 200x |" in table
    )
    assert "| lookahead (variance) | 0.3000 | 0.2250 | 0.1500 | 0.600 | 0.01 | 5x | 200x |" in table
    assert "| random |" in table and "| 1.000 | 0.001 | - | - |" in table
    assert "variance 5 s (6 epochs)" in table
    acquisition.plot(results, settings, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_acquisition_options_pick_the_imputer_and_criteria():
    import argparse

    from benchmarks import acquisition

    options = argparse.Namespace(
        posterior="autoregressive",
        criteria=["variance"],
        sampling_criteria=None,
        imputer_epochs=400,
    )
    settings = acquisition._with_options(acquisition.QUICK, options)
    assert (settings.posterior, settings.criteria) == ("autoregressive", ("variance",))
    assert settings.imputer_max_iter == 400 and settings.train_rows == 10_000
    defaults = argparse.Namespace(
        posterior="gaussian", criteria=None, sampling_criteria=None, imputer_epochs=None
    )
    assert acquisition._with_options(acquisition.QUICK, defaults) == acquisition.QUICK

    curve = {"criterion": "variance", "rmse": [0.3] * 11, "decision_s_per_step": 0.01}
    results = {"lookahead (variance)": curve, "sampling (variance)": curve, "random": curve}
    table = acquisition.markdown_table(results, settings, _acquisition_record(settings))
    assert "Imputer (autoregressive partial posterior)" in table
    assert "Compared: lookahead (variance) with sampling (variance)." in table
    assert "entropy" not in table.split("\n\n")[-1]
    assert "speed-up vs sampling (entropy)" not in table
    assert "| lookahead (variance) | 0.3000 | 0.3000 | 0.3000 | 1.000 | 0.01 | 1x |" in table


def test_acquisition_sampling_rows_can_cover_a_criterion_without_a_network():
    import argparse

    from benchmarks import acquisition

    options = argparse.Namespace(
        posterior="autoregressive",
        criteria=["variance"],
        sampling_criteria=["variance", "entropy"],
        imputer_epochs=None,
    )
    settings = acquisition._with_options(acquisition.QUICK, options)
    assert settings.sampled == ("variance", "entropy") and settings.criteria == ("variance",)

    def curve(criterion: str, seconds: float) -> dict:
        return {"criterion": criterion, "rmse": [0.3] * 11, "decision_s_per_step": seconds}

    results = {
        "lookahead (variance)": curve("variance", 0.01),
        "sampling (variance)": curve("variance", 0.5),
        "sampling (entropy)": curve("entropy", 100.0),
        "random": curve("variance", 0.001),
    }
    table = acquisition.markdown_table(results, settings, _acquisition_record(settings))
    assert (
        "| lookahead (variance) | 0.3000 | 0.3000 | 0.3000 | 1.000 | 0.01 | 50x | 10000x |" in table
    )
    assert "lookahead networks: variance 5 s (6 epochs)." in table
    assert "every lookahead row also with sampling (entropy)" in table


def _fake_measures(methods: tuple[str, ...], n: int, rng: np.random.Generator) -> dict:
    from benchmarks import conditional_prior

    measures = {}
    for method in methods:
        variational = method in conditional_prior.VARIATIONAL
        measures[method] = {
            "elbo": rng.normal(-100.0, 1.0, n) if variational else np.full(n, np.nan),
            "ll": rng.normal(-50.0, 1.0, n),
            "ssim": rng.random(n),
            "sample_std": rng.random(n),
            "tv": rng.random(n),
            "s_per_query_batched": 0.01,
            "s_per_query_single": 0.2,
            "errors": {},
        }
        if variational:
            measures[method]["kl"] = rng.random(n)
    return measures


def test_conditional_prior_report_has_every_method_and_the_bars(tmp_path):
    from dataclasses import asdict

    from benchmarks import conditional_prior

    settings = conditional_prior.SMOKE
    rng = np.random.default_rng(0)
    n = settings.n_queries
    low = _fake_measures(settings.methods, n, rng)
    low["planar"]["elbo"] = low["gvi"]["elbo"] + 0.5
    low["rejection"]["ll"][0] = np.nan
    low["rejection"]["errors"] = {"score_conditional": "accepted fewer than 500 draws"}
    high = _fake_measures(settings.high_methods, settings.high_queries, rng)
    record = {
        "settings": asdict(settings),
        "hardware": {"device": "cpu", "torch_threads": 1},
        "timings": {
            "vae_fit_s": 1.0,
            "vae_epochs": 3,
            "high_vae_fit_s": 2.0,
            "high_vae_epochs": 3,
            "total_s": 60.0,
        },
        "bars": conditional_prior.bars(low),
        "paired_ll": conditional_prior.paired_ll(low),
        "results": conditional_prior.summarised(low),
        "exact": {"tv_floor": list(rng.random(n))},
        "high": conditional_prior.summarised(high),
    }
    table = conditional_prior.markdown_table(record)
    for method in settings.methods:
        assert f"\n| {method} |" in table
    assert "| exact draws (TV floor) |" in table
    assert (
        "| share of queries with planar C-ELBO ≥ gvi C-ELBO ≥ 0.8 | 1.000 | 0.800 | yes |" in table
    )
    assert "| planar s/query batched ÷ one at a time ≤ 0.1 | 0.050 | 0.100 | yes |" in table
    assert "(C-ELBO of variational methods, LL of all) = 1 | 0.800 | 1.000 | **no** |" in table
    assert "- rejection, score_conditional: accepted fewer than 500 draws" in table
    assert "| hmc | - | " in table and "| - / 80 |" in table
    assert "binarized MNIST, 5 random test queries with 20% random pixels as evidence" in table
    assert "## Latent 32, hidden (256,)" in table
    assert "Query LL per query, paired: planar − HMC: median " in table


def test_conditional_prior_pairs_the_query_ll_with_hmcs():
    from benchmarks import conditional_prior

    hmc = np.array([-100.0, -50.0, -120.0, -80.0])
    measures = {
        "hmc": {"ll": hmc},
        "planar": {"ll": hmc + np.array([0.5, -0.1, 0.2, np.nan])},
        "rejection": {"ll": hmc + np.array([0.3, 0.3, -0.3, 0.1])},
    }
    paired = conditional_prior.paired_ll(measures)
    assert paired["planar_minus_hmc_median"] == pytest.approx(0.2)
    assert paired["planar_at_least_hmc_share"] == pytest.approx(2 / 3)
    assert paired["rejection_minus_hmc_median"] == pytest.approx(0.2)
    assert paired["rejection_at_least_hmc_share"] == pytest.approx(0.75)


def test_conditional_prior_figures_are_written(tmp_path):
    from benchmarks import conditional_prior

    rng = np.random.default_rng(0)
    images = (rng.random((3, 784)) < 0.3).astype(float)
    observed = rng.random((3, 784)) < 0.2
    pictures = {
        method: {"imputation": rng.random((3, 784)), "samples": rng.random((2, 3, 784)) < 0.5}
        for method in ("gvi", "planar", "hmc")
    }
    conditional_prior.plot_samples(images, observed, pictures, tmp_path / "samples.png")
    axis = np.linspace(-5, 5, 41)
    mass = np.exp(-0.5 * (axis[:, None] ** 2 + axis[None, :] ** 2))
    panels = [
        {"axis": axis, "mass": mass / mass.sum(), "draws": {"gvi": rng.normal(size=(50, 2))}}
        for _ in range(2)
    ]
    conditional_prior.plot_posteriors(panels, tmp_path / "posteriors.png")
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "posteriors.png").stat().st_size > 0


def test_conditional_prior_tv_of_exact_draws_shrinks_with_more_draws():
    from benchmarks import conditional_prior

    axis = np.linspace(-5, 5, 101)
    mass = np.exp(-0.5 * ((axis[:, None] - 1) ** 2 + axis[None, :] ** 2 / 0.25))
    mass /= mass.sum()
    edges = np.linspace(-5, 5, 21)
    weights = conditional_prior._bin_weights(axis, edges)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    binned = weights.T @ mass @ weights
    assert binned.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    distances = [
        conditional_prior.total_variation(
            conditional_prior._histogram(conditional_prior._exact_draws(mass, axis, n, rng), edges),
            binned,
        )
        for n in (100, 100_000)
    ]
    assert distances[1] < 0.02 < distances[0]
    flipped = conditional_prior._histogram(
        conditional_prior._exact_draws(mass.T, axis, 10_000, rng), edges
    )
    assert conditional_prior.total_variation(flipped, binned) > 0.3


class _FailingSampler:
    """Stands in for an imputer whose C-ELBO call raises."""

    inference = "rejection"

    def conditional_elbo(self, X, n_samples):
        raise RuntimeError("accepted fewer than 10 draws")

    def score_conditional(self, X, observed, n_samples):
        return np.zeros(len(X))

    def transform(self, X):
        return np.nan_to_num(X, nan=0.5)

    def sample(self, X, n_samples):
        return np.broadcast_to(np.nan_to_num(X, nan=1.0), (n_samples, *X.shape)).copy()


def test_conditional_prior_evaluation_keeps_going_after_a_failed_call():
    from benchmarks import conditional_prior

    rng = np.random.default_rng(0)
    images = (rng.random((6, 49)) < 0.5).astype(float)
    queries = conditional_prior.Queries(np.arange(6), images, rng.random((6, 49)) < 0.2)
    settings = conditional_prior.SMOKE
    measures, pictures = conditional_prior.evaluate_method(
        _FailingSampler(), queries, settings, detailed=True
    )
    assert measures["errors"] == {"conditional_elbo": "accepted fewer than 10 draws"}
    assert np.isnan(measures["elbo"]).all() and (measures["ll"] == 0).all()
    assert measures["ssim"].shape == (6,) and (measures["sample_std"] == 0).all()
    assert pictures["samples"].shape == (2, settings.plot_queries, 49)
    summary = conditional_prior.summarise(measures, "gvi")
    assert summary["finite_elbo"] == 0.0 and summary["elbo_median"] is None
    assert summary["finite_ll"] == 1.0 and summary["ll_median"] == 0.0
