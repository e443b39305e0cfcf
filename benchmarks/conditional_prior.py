"""Conditional inference in a pre-trained VAE on binarized MNIST (Wu, Domke & Sanner, 2018).

An MLP VAE with a Bernoulli decoder (latent 2, one hidden layer of 64) is fitted on binarized
MNIST (pixels > 0.5) with the plain ELBO. Every query is a random test image with a random
20% of its pixels as evidence (one Bernoulli(0.2) mask per pixel, seeded), and each
:class:`afa.ConditionalPriorImputer` inference method answers the same queries with the same
frozen VAE:

- conditional ELBO on 10,000 fresh draws (variational methods) and its gap to the exact
  ``log p(x_o)`` of a 401 x 401 grid over ``[-5, 5]²``, i.e. ``KL(q || p(z | x_o))``;
- query marginal likelihood ``log (1/K) Σ_k p(x_u | x_o, z_k)``, K = 500;
- SSIM of the imputation to the true image, and the per-pixel std of 16 sampled images;
- total-variation distance between 2,000 latent draws and the grid posterior on a common
  50 x 50 binning of ``[-5, 5]²`` (paper Fig. 4), next to the distance of 2,000 exact draws
  from the grid itself (the floor set by sampling noise);
- wall time of ``transform`` per query, for all queries in one call and one query per call
  (for the variational methods, the median of three calls each).

A second VAE (latent 32, one hidden layer of 256) compares ``gvi``, ``planar`` and ``hmc`` on
20 of the queries. Run from the repository root::

    python -m benchmarks.conditional_prior --quick   # 20,000 training images
    python -m benchmarks.conditional_prior           # 60,000 training images
    python -m benchmarks.conditional_prior --smoke   # tiny end-to-end check, under a minute

Writes ``benchmarks/results/conditional_prior[_quick|_smoke].{json,md}``, ``..._samples.png``
and ``..._posteriors.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import sklearn
import torch

from afa import ConditionalPriorImputer, PosteriorMatchingImputer, __version__
from afa._torch import resolve_device
from afa.conditional import Evidence, grid_log_posterior
from afa.datasets import load_mnist
from afa.metrics import ssim
from benchmarks._cli import device_name, positive_int
from benchmarks._results import write_results

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")
VARIATIONAL = ("gvi", "planar", "fcn")


@dataclass(frozen=True)
class Settings:
    train_rows: int
    epochs: int
    high_train_rows: int
    high_epochs: int
    n_queries: int = 50
    evidence_fraction: float = 0.2
    latent_dim: int = 2
    hidden_layer_sizes: tuple[int, ...] = (64,)
    methods: tuple[str, ...] = ("gvi", "planar", "fcn", "hmc", "rejection", "pseudo_gibbs")
    n_layers: int = 16
    n_burnin: int = 500
    elbo_samples: int = 10_000
    ll_samples: int = 500
    image_samples: int = 16
    single_queries: int = 10
    timing_repeats: int = 3
    n_draws: int = 2_000
    grid_limit: float = 5.0
    grid_resolution: int = 401
    n_bins: int = 50
    high_queries: int = 20
    high_latent_dim: int = 32
    high_hidden_layer_sizes: tuple[int, ...] = (256,)
    high_methods: tuple[str, ...] = ("gvi", "planar", "hmc")
    plot_queries: int = 5
    posterior_queries: int = 2
    plot_methods: tuple[str, ...] = ("gvi", "planar", "hmc")


QUICK = Settings(train_rows=20_000, epochs=60, high_train_rows=20_000, high_epochs=30)
FULL = Settings(train_rows=60_000, epochs=100, high_train_rows=60_000, high_epochs=100)
SMOKE = replace(
    QUICK,
    train_rows=2_000,
    epochs=3,
    high_train_rows=2_000,
    high_epochs=3,
    n_queries=5,
    high_queries=3,
    single_queries=2,
    timing_repeats=1,
    n_burnin=50,
    elbo_samples=1_000,
    ll_samples=100,
    n_draws=200,
    grid_resolution=201,
)


@dataclass(frozen=True)
class Queries:
    """Test images (binarized rows), their test-set index and the evidence mask."""

    index: np.ndarray
    images: np.ndarray
    observed: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def with_nan(self) -> np.ndarray:
        """The images with the unobserved pixels set to NaN."""
        return np.where(self.observed, self.images, np.nan)

    def head(self, n: int) -> Queries:
        """The first ``n`` queries."""
        return Queries(self.index[:n], self.images[:n], self.observed[:n])


def binarized_mnist(split: str, rows: int | None = None) -> np.ndarray:
    """The first ``rows`` images of ``split`` at 28x28 with pixels > 0.5 set to 1, else 0."""
    images, _ = load_mnist(split)
    return (images[:rows] > 0.5).astype(np.float64)


def fit_base(
    train: np.ndarray,
    latent_dim: int,
    hidden_layer_sizes: tuple[int, ...],
    epochs: int,
    device: str,
    seed: int,
) -> tuple[PosteriorMatchingImputer, dict]:
    """Fit the Bernoulli VAE with the plain ELBO; return it and its fit time and epochs."""
    start = time.perf_counter()
    base = ConditionalPriorImputer(
        latent_dim=latent_dim,
        hidden_layer_sizes=hidden_layer_sizes,
        likelihood="bernoulli",
        max_epochs=epochs,
        device=device,
        random_state=seed,
    ).fit(train)
    return base.base_, {"vae_fit_s": time.perf_counter() - start, "vae_epochs": base.base_.n_iter_}


def make_queries(test: np.ndarray, n_queries: int, fraction: float, seed: int) -> Queries:
    """``n_queries`` random test images, each pixel evidence with probability ``fraction``."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(test), size=n_queries, replace=False)
    observed = rng.random((n_queries, test.shape[1])) < fraction
    return Queries(index, test[index], observed)


def make_imputer(
    base: PosteriorMatchingImputer, method: str, settings: Settings, queries: Queries, seed: int
) -> ConditionalPriorImputer:
    """The imputer of one inference method on the frozen ``base``."""
    return ConditionalPriorImputer(
        base=base,
        inference=method,
        n_layers=settings.n_layers,
        n_burnin=settings.n_burnin,
        random_state=seed,
    ).fit(queries.images)


def _attempt(errors: dict[str, str], name: str, compute: Callable[[], T], failed: T) -> T:
    """``compute()``, or ``failed`` when it raises RuntimeError, the message kept in ``errors``.

    The rejection sampler raises when a query accepts too few draws within its proposal budget.
    """
    try:
        return compute()
    except RuntimeError as error:
        errors[name] = str(error)
        return failed


def _per_query_seconds(
    imputer: ConditionalPriorImputer, X: np.ndarray, repeats: int = 1
) -> tuple[float, np.ndarray]:
    """Seconds per query of ``transform(X)``, the median of ``repeats`` calls, and its output.

    ``transform`` uses common random numbers, so every call returns the same imputation.
    """
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        imputed = imputer.transform(X)
        seconds.append((time.perf_counter() - start) / len(X))
    return float(np.median(seconds)), imputed


def _images(rows: np.ndarray) -> np.ndarray:
    side = int(round(np.sqrt(rows.shape[-1])))
    return rows.reshape(*rows.shape[:-1], side, side)


@torch.no_grad()
def evaluate_method(
    imputer: ConditionalPriorImputer, queries: Queries, settings: Settings, detailed: bool
) -> tuple[dict, dict]:
    """Per-query measures of one method, and its imputations and samples for the figure.

    ``detailed`` adds the sample spread and the one-query-per-call timing. Runs without
    autograd: the imputer enables it where it optimises, and elsewhere its calls would build
    graphs through the frozen decoder (gigabytes for the rejection sampler's bound). A call
    that raises RuntimeError gives NaN measures and its message under ``errors``.

    Returns
    -------
    measures : dict
        Arrays of shape ``(n_queries,)``: ``elbo``, ``ll``, ``ssim`` (and ``sample_std``);
        the floats ``s_per_query_batched`` (and ``s_per_query_single``); ``errors``, the
        messages of failed calls by call.
    pictures : dict
        ``imputation`` of shape ``(k, d)`` and ``samples`` of shape ``(2, k, d)`` for the
        first ``k = settings.plot_queries`` queries (only when ``detailed``).
    """
    X, errors = queries.with_nan, {}
    nan = np.full(len(queries), np.nan)
    # the variational fits take seconds: medians of repeated calls steady the batched ÷ single ratio
    repeats = settings.timing_repeats if imputer.inference in VARIATIONAL else 1
    measures = {
        "elbo": _attempt(
            errors,
            "conditional_elbo",
            lambda: imputer.conditional_elbo(X, n_samples=settings.elbo_samples),
            nan,
        ),
        "ll": _attempt(
            errors,
            "score_conditional",
            lambda: imputer.score_conditional(
                queries.images, queries.observed, n_samples=settings.ll_samples
            ),
            nan,
        ),
        "errors": errors,
    }
    measures["s_per_query_batched"], imputed = _attempt(
        errors,
        "transform",
        lambda: _per_query_seconds(imputer, X, repeats),
        (np.nan, np.full_like(X, np.nan)),
    )
    measures["ssim"] = ssim(_images(imputed), _images(queries.images))
    if not detailed:
        return measures, {}
    single = [
        _attempt(
            errors,
            f"transform of query {i}",
            lambda i=i: _per_query_seconds(imputer, X[i : i + 1], repeats)[0],
            np.nan,
        )
        for i in range(settings.single_queries)
    ]
    measures["s_per_query_single"] = float(np.mean(single))
    failed = np.full((settings.image_samples, *X.shape), np.nan)
    samples = _attempt(
        errors, "sample", lambda: imputer.sample(X, n_samples=settings.image_samples), failed
    )
    spread = np.where(queries.observed, np.nan, samples.std(axis=0))
    measures["sample_std"] = np.nanmean(spread, axis=1)
    k = settings.plot_queries
    return measures, {"imputation": imputed[:k], "samples": samples[:2, :k]}


def _bin_weights(axis: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(R, B)``: the share of each grid cell (centred on ``axis``) falling in each bin.

    The outermost cells stick out of ``[edges[0], edges[-1]]`` by half a cell; their mass
    goes to the edge bins, as out-of-range draws do in :func:`_histogram`.
    """
    half = (axis[1] - axis[0]) / 2
    left = np.maximum(axis[:, None] - half, edges[None, :-1])
    right = np.minimum(axis[:, None] + half, edges[None, 1:])
    overlap = np.clip(right - left, 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _histogram(draws: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Normalised 2-D histogram of ``(n, 2)`` draws; draws outside go to the edge bins."""
    clipped = np.clip(draws, edges[0], edges[-1])
    counts, _, _ = np.histogram2d(clipped[:, 0], clipped[:, 1], bins=[edges, edges])
    return counts / len(draws)


def _exact_draws(
    mass: np.ndarray, axis: np.ndarray, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws from the grid posterior: a cell by its mass, then uniformly within the cell."""
    cells = rng.choice(mass.size, size=n_draws, p=mass.ravel() / mass.sum())
    centres = np.stack([axis[cells // len(axis)], axis[cells % len(axis)]], axis=1)
    return centres + (axis[1] - axis[0]) * (rng.random((n_draws, 2)) - 0.5)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance ``Σ |p - q| / 2`` of two distributions on the same bins."""
    return float(0.5 * np.abs(p - q).sum())


def grid_posterior(
    evidence: Evidence, limit: float, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's exact posterior cell masses ``(Q, R, R)`` (axis 1 is ``z_1``) and
    ``log p(x_o)`` ``(Q,)`` by :func:`afa.conditional.grid_log_posterior`.

    The grid is computed one query at a time: with many queries at once its many small
    per-chunk results fragment the heap, and resident memory grows by gigabytes.
    """
    masses, log_evidences = [], []
    for query in range(len(evidence)):
        one = evidence.subset(torch.tensor([query], device=evidence.x.device))
        _, log_mass, log_evidence = grid_log_posterior(one, limit, resolution)
        masses.append(log_mass.exp().double().cpu().numpy().reshape(resolution, resolution))
        log_evidences.append(float(log_evidence))
    return np.stack(masses), np.array(log_evidences)


@torch.no_grad()
def exact_comparison(
    imputers: dict[str, ConditionalPriorImputer],
    base: PosteriorMatchingImputer,
    queries: Queries,
    elbos: dict[str, np.ndarray],
    settings: Settings,
    seed: int,
) -> tuple[dict, list[dict]]:
    """Compare every method's latent draws with the exact grid posterior (paper Fig. 4).

    The grid uses ``base``'s decoder and the queries' evidence.

    Returns
    -------
    exact : dict
        ``log_evidence`` and ``tv_floor`` (exact draws against the grid) of shape ``(Q,)``;
        ``tv`` and ``kl`` map methods to ``(Q,)`` arrays (``kl`` for variational methods only,
        ``log p(x_o) - C-ELBO``); ``grid_s`` is the grid's wall time; ``errors`` maps the
        methods whose draws raised RuntimeError (their TV is NaN) to the message.
    panels : list of dict
        For the first ``settings.posterior_queries`` queries: the grid ``axis``, the cell
        ``mass`` of shape ``(R, R)`` and ``draws`` of the plotted methods.
    """
    with_nan = queries.with_nan
    model = base._model()
    x, mask = base._tensors(queries.images, queries.observed)
    evidence = Evidence(model.decoder, model.likelihood, x, mask)
    start = time.perf_counter()
    mass, log_evidence = grid_posterior(evidence, settings.grid_limit, settings.grid_resolution)
    grid_s = time.perf_counter() - start
    axis = np.linspace(-settings.grid_limit, settings.grid_limit, settings.grid_resolution)
    edges = np.linspace(-settings.grid_limit, settings.grid_limit, settings.n_bins + 1)
    weights = _bin_weights(axis, edges)
    binned = weights.T @ mass @ weights
    rng = np.random.default_rng(seed)
    floor = [
        total_variation(_histogram(_exact_draws(m, axis, settings.n_draws, rng), edges), b)
        for m, b in zip(mass, binned, strict=True)
    ]
    errors: dict[str, str] = {}
    failed = np.full((settings.n_draws, len(evidence), 2), np.nan)
    draws = {
        method: _attempt(
            errors,
            method,
            lambda imputer=imputer: imputer.condition(with_nan).latents(settings.n_draws),
            failed,
        )
        for method, imputer in imputers.items()
    }
    tv = {
        method: np.array(
            [total_variation(_histogram(z[:, q], edges), binned[q]) for q in range(len(mass))]
        )
        for method, z in draws.items()
    }
    kl = {method: log_evidence - elbos[method] for method in imputers if method in VARIATIONAL}
    panels = [
        {
            "axis": axis,
            "mass": mass[q],
            "draws": {m: draws[m][:, q] for m in settings.plot_methods if m in draws},
        }
        for q in range(min(settings.posterior_queries, len(mass)))
    ]
    exact = {"log_evidence": log_evidence, "tv_floor": np.array(floor), "tv": tv, "kl": kl}
    return exact | {"grid_s": grid_s, "errors": errors}, panels


def _median(values: np.ndarray | None) -> float | None:
    if values is None or np.isnan(values).all():
        return None
    return float(np.nanmedian(values))


def _finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when it is missing or not finite (strict JSON)."""
    return float(value) if value is not None and np.isfinite(value) else None


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None else float(np.mean(values))


def _finite_share(values: np.ndarray) -> float:
    return float(np.isfinite(values).mean())


def summarise(measures: dict, method: str) -> dict:
    """Medians, means, finite shares and timings of one method's per-query measures."""
    batched = measures["s_per_query_batched"]
    single = measures.get("s_per_query_single")
    variational = method in VARIATIONAL
    summary = {
        "elbo_median": _median(measures["elbo"]) if variational else None,
        "kl_median": _median(measures.get("kl")),
        "ll_median": _median(measures["ll"]),
        "ssim_mean": _mean(measures["ssim"]),
        "sample_std_mean": _mean(measures.get("sample_std")),
        "tv_median": _median(measures.get("tv")),
        "finite_elbo": _finite_share(measures["elbo"]) if variational else None,
        "finite_ll": _finite_share(measures["ll"]),
        "s_per_query_batched": batched,
        "s_per_query_single": single,
        "batched_over_single": None if single is None else batched / single,
    }
    return {name: _finite_or_none(value) for name, value in summary.items()}


def _bar(text: str, value: float, threshold: float, passed: bool) -> dict:
    return {
        "bar": text,
        "value": _finite_or_none(value),
        "threshold": _finite_or_none(threshold),
        "passed": bool(passed),
    }


def bars(measures: dict[str, dict]) -> list[dict]:
    """The acceptance bars: ``value`` against ``threshold`` and whether it passed."""
    planar, gvi, hmc = measures["planar"], measures["gvi"], measures["hmc"]
    beats = float(np.mean(planar["elbo"] >= gvi["elbo"]))
    finite = min(
        [_finite_share(m["ll"]) for m in measures.values()]
        + [_finite_share(m["elbo"]) for name, m in measures.items() if name in VARIATIONAL]
    )
    ratio = planar["s_per_query_batched"] / planar["s_per_query_single"]
    planar_ll, hmc_ll = float(np.median(planar["ll"])), float(np.median(hmc["ll"]))
    return [
        _bar("share of queries with planar C-ELBO ≥ gvi C-ELBO ≥ 0.8", beats, 0.8, beats >= 0.8),
        _bar(
            "share of finite values (C-ELBO of variational methods, LL of all) = 1",
            finite,
            1.0,
            finite == 1.0,
        ),
        _bar("planar s/query batched ÷ one at a time ≤ 0.1", ratio, 0.1, ratio <= 0.1),
        _bar(
            "planar median query LL ≥ HMC's (threshold = HMC's)",
            planar_ll,
            hmc_ll,
            planar_ll >= hmc_ll,
        ),
    ]


def paired_ll(measures: dict[str, dict]) -> dict[str, float | None]:
    """Per-query differences of the query LL from HMC's, for planar and rejection.

    The medians of two methods' LLs over the queries can swing by more than the methods
    differ: near the median, queries sit about a nat apart, and each LL estimate carries
    Monte Carlo noise, so the two medians may come from different queries. The median of
    the per-query differences, and the share of queries where planar is at least HMC's,
    compare the methods on the same queries.
    """
    hmc = np.asarray(measures["hmc"]["ll"], dtype=float)
    paired = {}
    for method in ("planar", "rejection"):
        if method not in measures:
            continue
        difference = np.asarray(measures[method]["ll"], dtype=float) - hmc
        finite = difference[np.isfinite(difference)]
        paired[f"{method}_minus_hmc_median"] = float(np.median(finite)) if finite.size else None
        paired[f"{method}_at_least_hmc_share"] = (
            float(np.mean(finite >= 0)) if finite.size else None
        )
    return paired


def _paired_note(record: dict) -> list[str]:
    paired = record.get("paired_ll")
    if not paired:
        return []
    parts = [
        f"{method} − HMC: median {_cell(paired.get(f'{method}_minus_hmc_median'), '+.3f')} nats, "
        f"{method} ≥ HMC on {_cell(_percent(paired.get(f'{method}_at_least_hmc_share')), '.0f')}% "
        "of the queries"
        for method in ("planar", "rejection")
        if f"{method}_minus_hmc_median" in paired
    ]
    return [f"\nQuery LL per query, paired: {'; '.join(parts)} (rejection draws are exact).\n"]


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _finite_cell(summary: dict) -> str:
    elbo = summary["finite_elbo"]
    return (
        f"{_cell(None if elbo is None else 100 * elbo, '.0f')} / {100 * summary['finite_ll']:.0f}"
    )


def _method_rows(record: dict) -> list[str]:
    rows = [
        "| method | C-ELBO median | KL median | LL median | SSIM mean | sample std | TV median "
        "| finite % (C-ELBO / LL) | s/query batched | s/query single | batched ÷ single |\n",
        "|---|" + "---:|" * 10 + "\n",
    ]
    for method, result in record["results"].items():
        s = result["summary"]
        rows.append(
            f"| {method} | {_cell(s['elbo_median'], '.2f')} | {_cell(s['kl_median'], '.3f')} "
            f"| {_cell(s['ll_median'], '.2f')} | {_cell(s['ssim_mean'], '.3f')} "
            f"| {_cell(s['sample_std_mean'], '.3f')} | {_cell(s['tv_median'], '.3f')} "
            f"| {_finite_cell(s)} | {_cell(s['s_per_query_batched'], '.3g')} "
            f"| {_cell(s['s_per_query_single'], '.3g')} "
            f"| {_cell(s['batched_over_single'], '.3f')} |\n"
        )
    floor = _median(np.asarray(record["exact"]["tv_floor"], dtype=float))
    rows.append(f"| exact draws (TV floor) | - | - | - | - | - | {floor:.3f} | - | - | - | - |\n")
    return rows


def _error_notes(results: dict[str, dict]) -> list[str]:
    """One bullet per failed call: ``- method, call: message``."""
    return [
        f"- {method}, {call}: {message}\n"
        for method, result in results.items()
        for call, message in result["per_query"]["errors"].items()
    ]


def _bar_rows(record: dict) -> list[str]:
    rows = ["| bar | value | threshold | passed |\n", "|---|---:|---:|---|\n"]
    for bar in record["bars"]:
        verdict = "yes" if bar["passed"] else "**no**"
        rows.append(
            f"| {bar['bar']} | {_cell(bar['value'], '.3f')} | {_cell(bar['threshold'], '.3f')} "
            f"| {verdict} |\n"
        )
    return rows


def _high_rows(record: dict) -> list[str]:
    rows = [
        "| method | C-ELBO median | LL median | SSIM mean | finite % (C-ELBO / LL) "
        "| s/query batched |\n",
        "|---|---:|---:|---:|---:|---:|\n",
    ]
    for method, result in record["high"].items():
        s = result["summary"]
        rows.append(
            f"| {method} | {_cell(s['elbo_median'], '.2f')} | {_cell(s['ll_median'], '.2f')} "
            f"| {_cell(s['ssim_mean'], '.3f')} | {_finite_cell(s)} "
            f"| {_cell(s['s_per_query_batched'], '.3g')} |\n"
        )
    return rows


def _low_caption(record: dict) -> str:
    settings, timings, hardware = record["settings"], record["timings"], record["hardware"]
    limit = f"{settings['grid_limit']:g}"
    return (
        f"binarized MNIST, {settings['n_queries']} random test queries with "
        f"{100 * settings['evidence_fraction']:.0f}% random pixels as evidence. VAE: "
        f"{settings['train_rows']:,} training rows, {timings['vae_epochs']} epochs (at most "
        f"{settings['epochs']}), fit in {timings['vae_fit_s']:.0f} s. C-ELBO on "
        f"{settings['elbo_samples']:,} fresh draws; KL = grid log p(x_o) - C-ELBO; LL = query "
        f"marginal log-likelihood with K = {settings['ll_samples']}; sample std over "
        f"{settings['image_samples']} sampled images, unobserved pixels; TV between "
        f"{settings['n_draws']:,} latent draws and the {settings['grid_resolution']}² grid "
        f"posterior on {settings['n_bins']}x{settings['n_bins']} bins over [-{limit}, {limit}]² "
        f"(floor: {settings['n_draws']:,} exact draws from the grid); timings of `transform` "
        f"(all {settings['n_queries']} queries in one call, and the first "
        f"{settings['single_queries']} one per call; for {', '.join(VARIATIONAL)} the median "
        f"of {settings['timing_repeats']} calls each); {hardware['device']}, "
        f"{hardware['torch_threads']} torch threads; {timings['total_s']:.0f} s in all.\n"
    )


def _failures(results: dict[str, dict]) -> list[str]:
    notes = _error_notes(results)
    return ["\nFailed calls (their measures are missing above):\n\n", *notes] if notes else []


def markdown_table(record: dict) -> str:
    """The report: the method table with the exact comparison, the bars, the latent-32 table."""
    settings, timings = record["settings"], record["timings"]
    lines = [
        f"## Latent {settings['latent_dim']}, hidden {tuple(settings['hidden_layer_sizes'])}\n\n",
        *_method_rows(record),
        "\n" + _low_caption(record),
        *_failures(record["results"]),
        "\n## Bars\n\n",
        *_bar_rows(record),
        *_paired_note(record),
        f"\n## Latent {settings['high_latent_dim']}, hidden "
        f"{tuple(settings['high_hidden_layer_sizes'])}\n\n",
        *_high_rows(record),
        f"\nThe first {settings['high_queries']} of the queries. VAE: "
        f"{settings['high_train_rows']:,} training rows, {timings['high_vae_epochs']} epochs (at "
        f"most {settings['high_epochs']}), fit in {timings['high_vae_fit_s']:.0f} s.\n",
        *_failures(record["high"]),
    ]
    return "".join(lines)


def _image_axis(axis, image: np.ndarray, title: str | None) -> None:
    axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if title is not None:
        axis.set_title(title, fontsize=7)


def plot_samples(
    images: np.ndarray, observed: np.ndarray, pictures: dict[str, dict], path: Path
) -> None:
    """Rows = queries; columns = true image, evidence (unobserved grey), then for each method
    its imputation and two sampled images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(images)
    columns = [("true", images), ("evidence", np.where(observed, images, 0.5))]
    for method, picture in pictures.items():
        columns.append((f"{method}\nimputation", picture["imputation"]))
        columns += [(f"{method}\nsample {i + 1}", picture["samples"][i]) for i in range(2)]
    figure, axes = plt.subplots(k, len(columns), figsize=(1.1 * len(columns), 1.1 * k + 0.4))
    axes = np.asarray(axes).reshape(k, len(columns))
    for row in range(k):
        for column, (title, rows) in enumerate(columns):
            _image_axis(axes[row, column], _images(rows[row]), title if row == 0 else None)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_posteriors(panels: list[dict], path: Path, max_points: int = 400) -> None:
    """Per query: contours of the grid posterior (at 1, 10, 30, 60 and 90% of its peak) with
    each method's latent draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for query, (axis, panel) in enumerate(zip(axes[0], panels, strict=True)):
        grid = panel["axis"]
        levels = panel["mass"].max() * np.array([0.01, 0.1, 0.3, 0.6, 0.9])
        axis.contour(grid, grid, panel["mass"].T, levels=levels, colors="black", linewidths=0.7)
        for method, draws in panel["draws"].items():
            shown = draws[:max_points]
            axis.scatter(shown[:, 0], shown[:, 1], s=3, alpha=0.4, label=method)
        axis.set_title(f"query {query}: exact posterior and draws", fontsize=9)
        axis.set_xlabel("$z_1$")
        axis.set_ylabel("$z_2$")
        axis.legend(fontsize=7, markerscale=3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _jsonable(measures: dict) -> dict:
    """Arrays as lists with non-finite values as None (strict JSON); floats and dicts kept."""

    def convert(value):
        if isinstance(value, dict):
            return value
        if np.ndim(value) == 0:
            return _finite_or_none(value)
        return [float(v) if np.isfinite(v) else None for v in np.asarray(value, dtype=float)]

    return {name: convert(value) for name, value in measures.items()}


def _report_progress(task: str, start: float) -> float:
    """Print how long ``task`` took since ``start``; return the seconds."""
    seconds = time.perf_counter() - start
    print(f"{task}: {seconds:.1f} s", flush=True)
    return seconds


def run_low(
    train: np.ndarray, queries: Queries, settings: Settings, device: str, seed: int
) -> tuple[dict, dict, list[dict], dict, dict]:
    """The latent-2 setting: per-method measures, exact comparison, figures' data, timings."""
    base, fit = fit_base(
        train, settings.latent_dim, settings.hidden_layer_sizes, settings.epochs, device, seed
    )
    print(f"VAE, latent {settings.latent_dim}: {fit['vae_fit_s']:.1f} s", flush=True)
    imputers = {m: make_imputer(base, m, settings, queries, seed) for m in settings.methods}
    measures, pictures = {}, {}
    for method, imputer in imputers.items():
        start = time.perf_counter()
        measures[method], pictures[method] = evaluate_method(imputer, queries, settings, True)
        measures[method]["evaluate_s"] = _report_progress(method, start)
    elbos = {m: measures[m]["elbo"] for m in settings.methods}
    exact, panels = exact_comparison(imputers, base, queries, elbos, settings, seed)
    for method in settings.methods:
        measures[method]["tv"] = exact["tv"][method]
        if method in exact["errors"]:
            measures[method]["errors"]["latent draws"] = exact["errors"][method]
        if method in exact["kl"]:
            measures[method]["kl"] = exact["kl"][method]
    exact_record = {"log_evidence": exact["log_evidence"], "tv_floor": exact["tv_floor"]}
    pictures = {m: pictures[m] for m in settings.plot_methods if m in pictures}
    return measures, exact_record, panels, pictures, fit | {"grid_s": exact["grid_s"]}


def run_high(
    train: np.ndarray, queries: Queries, settings: Settings, device: str, seed: int
) -> tuple[dict, dict]:
    """The latent-32 setting: C-ELBO, LL, SSIM and batched time per method."""
    base, fit = fit_base(
        train,
        settings.high_latent_dim,
        settings.high_hidden_layer_sizes,
        settings.high_epochs,
        device,
        seed,
    )
    print(f"VAE, latent {settings.high_latent_dim}: {fit['vae_fit_s']:.1f} s", flush=True)
    measures = {}
    for method in settings.high_methods:
        start = time.perf_counter()
        imputer = make_imputer(base, method, settings, queries, seed)
        measures[method] = evaluate_method(imputer, queries, settings, False)[0]
        measures[method]["evaluate_s"] = _report_progress(
            f"latent {settings.high_latent_dim}, {method}", start
        )
    return measures, {"high_vae_fit_s": fit["vae_fit_s"], "high_vae_epochs": fit["vae_epochs"]}


def summarised(measures: dict[str, dict]) -> dict[str, dict]:
    """Per method: its ``summary`` and its JSON-ready ``per_query`` measures."""
    return {
        method: {"summary": summarise(values, method), "per_query": _jsonable(values)}
        for method, values in measures.items()
    }


def _hardware(device: torch.device) -> dict:
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
        # idle OpenMP threads that sleep (PASSIVE) make small operations, and so the
        # one-query-at-a-time timings, slower: the batched / single ratio depends on it
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="20k training images, 60/30 epochs")
    mode.add_argument("--smoke", action="store_true", help="tiny end-to-end check")
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    name = "conditional_prior" + ("_smoke" if args.smoke else "_quick" if args.quick else "")
    hardware = _hardware(resolve_device(args.device))
    start = time.perf_counter()
    train = binarized_mnist("train", max(settings.train_rows, settings.high_train_rows))
    test = binarized_mnist("test")
    queries = make_queries(test, settings.n_queries, settings.evidence_fraction, args.seed)
    low, exact, panels, pictures, timings = run_low(
        train[: settings.train_rows], queries, settings, args.device, args.seed
    )
    high, high_timings = run_high(
        train[: settings.high_train_rows],
        queries.head(settings.high_queries),
        settings,
        args.device,
        args.seed,
    )
    record = {
        "settings": asdict(settings),
        "versions": {
            "afa": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
        "hardware": hardware,
        "timings": timings | high_timings | {"total_s": time.perf_counter() - start},
        "queries": {
            "test_index": queries.index.tolist(),
            "evidence_pixels": queries.observed.sum(axis=1).tolist(),
        },
        "bars": bars(low),
        "paired_ll": paired_ll(low),
        "results": summarised(low),
        "exact": _jsonable(exact),
        "high": summarised(high),
    }
    write_results(record, markdown_table(record), args.output_dir, name)
    head = queries.head(settings.plot_queries)
    plot_samples(head.images, head.observed, pictures, args.output_dir / f"{name}_samples.png")
    plot_posteriors(panels, args.output_dir / f"{name}_posteriors.png")


if __name__ == "__main__":
    main()
