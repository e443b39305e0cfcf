"""UCI arbitrary-conditioning benchmark: the Posterior Matching Table 2 protocol.

For each dataset every method is fitted once on the training rows and then judged on the same
test masks: in each of 5 trials every test entry is hidden with probability 0.5 (one
Bernoulli mask per row per trial, seeded by the trial number), and the script records

- NRMSE: per feature, RMSE over the hidden entries / that feature's population std over the
  test rows used, averaged over features (:func:`afa.metrics.nrmse`);
- LL: mean over rows of log p(x_u | x_o), total nats per row (methods with a density only);

and reports mean ± std over the trials, next to the published figures of PM, VAEAC, ACE and
ACFlow (official splits, so not comparable; see each dataset's caveat).

Run from the repository root::

    python -m benchmarks.uci --quick     # <= 15 minutes on 2 CPU cores
    python -m benchmarks.uci             # the full protocol; see --help for its cost

Writes ``benchmarks/results/uci[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

from afa import PosteriorMatchingImputer, __version__
from afa._torch import resolve_device
from afa.baselines import GaussianImputer, GaussianMixtureImputer
from afa.datasets import load_uci_maf
from afa.metrics import nrmse
from benchmarks._cli import device_name, json_object, positive_int
from benchmarks._results import write_results

RESULTS = Path(__file__).parent / "results"
MISSING_RATE = 0.5
POSTERIORS = ("autoregressive", "gaussian", "flow")

CAVEATS = {
    "power": "Jan-Jun 2007 subset with MAF preprocessing, not the official split",
    "bsds300": "re-created from the 300 BSDS images by the RNADE/MAF protocol, "
    "not the official file",
    "miniboone": "official MAF val/test splits; fitted on val (3,284 rows) because the "
    "train split is not staged",
}

# PM paper, Table 2 (ACE, ACFlow and VAEAC there are reproduced from Strauss & Oliva):
# (NRMSE mean, std, LL mean, std), official splits and all test rows.
PUBLISHED = {
    "power": {
        "PM": (0.834, 0.001, 0.246, 0.002),
        "VAEAC": (0.880, 0.001, -0.042, 0.002),
        "ACE": (0.828, 0.002, 0.631, 0.002),
        "ACFlow": (0.877, 0.001, 0.561, 0.003),
    },
    "miniboone": {
        "PM": (0.450, 0.002, -3.116, 0.175),
        "VAEAC": (0.462, 0.002, -3.452, 0.067),
        "ACE": (0.432, 0.003, 0.310, 0.054),
        "ACFlow": (0.478, 0.004, -0.972, 0.022),
    },
    "bsds300": {
        "PM": (0.573, 0.000, 77.488, 0.012),
        "VAEAC": (0.615, 0.000, 74.850, 0.005),
        "ACE": (0.525, 0.000, 86.701, 0.008),
        "ACFlow": (0.603, 0.000, 81.827, 0.007),
    },
}


@dataclass(frozen=True)
class Settings:
    """What a run measures, and on how much data."""

    datasets: tuple[str, ...]
    posteriors: tuple[str, ...]
    max_train_rows: int | None
    max_test_rows: int | None
    max_neighbour_rows: int
    mixture_components: tuple[int, ...]
    n_samples: int = 512
    trials: int = 5
    device: str = "auto"
    iterative_max_iter: int = 25
    pm_params: dict = field(default_factory=dict)  # overrides of PM's defaults, if any


QUICK = Settings(
    datasets=("power", "bsds300"),
    posteriors=("autoregressive",),
    max_train_rows=10_000,
    max_test_rows=500,
    max_neighbour_rows=10_000,
    mixture_components=(4, 16),
    iterative_max_iter=10,
)
FULL = Settings(
    datasets=("power", "bsds300", "miniboone"),
    posteriors=POSTERIORS,
    max_train_rows=None,
    max_test_rows=None,
    max_neighbour_rows=50_000,
    mixture_components=(1, 4, 16, 32),
)


@dataclass
class Split:
    """One dataset's rows as used by a run."""

    name: str
    train: np.ndarray
    selection: np.ndarray  # rows for choosing baseline settings
    selection_train: np.ndarray  # training rows without the selection rows
    test: np.ndarray
    train_source: str


def load_split(name: str, settings: Settings) -> Split:
    """Training, selection and test rows (float64), capped as ``settings`` says.

    Selection rows come from the validation split where the model is fitted on ``train``;
    MINIBOONE is fitted on its validation split, so its last 10% are held out for selection
    and refitted on afterwards.
    """
    data = load_uci_maf(name)
    if data.train is not None:
        train = data.train[: settings.max_train_rows]
        selection, selection_train, source = data.val[:2_000], train, "train"
    else:
        train = data.val[: settings.max_train_rows]
        n_held = len(train) // 10
        selection, selection_train = train[-n_held:], train[:-n_held]
        source = "val (train not staged)"
    return Split(
        name=name,
        train=np.asarray(train, dtype=np.float64),
        selection=np.asarray(selection, dtype=np.float64),
        selection_train=np.asarray(selection_train, dtype=np.float64),
        test=np.asarray(data.test[: settings.max_test_rows], dtype=np.float64),
        train_source=source,
    )


def trial_masks(shape: tuple[int, int], trials: int) -> list[np.ndarray]:
    """One Bernoulli(0.5) observed-mask per trial, identical for every method."""
    return [np.random.default_rng(trial).random(shape) >= MISSING_RATE for trial in range(trials)]


def masked(X: np.ndarray, seed: int = 1) -> np.ndarray:
    """``X`` with every entry hidden (NaN) with probability 0.5."""
    return np.where(np.random.default_rng(seed).random(X.shape) >= MISSING_RATE, X, np.nan)


# --------------------------------------------------------------------------- methods
def select_mixture(
    split: Split, components: tuple[int, ...]
) -> tuple[GaussianMixtureImputer, dict]:
    """The mixture with the best mean log-likelihood on the selection rows (unfitted)."""
    scores = {}
    for n in components:
        candidate = GaussianMixtureImputer(n_components=n, random_state=0)
        candidate.fit(split.selection_train)
        scores[n] = float(candidate.mixture_.score(split.selection))
    best = max(scores, key=scores.get)
    chosen = GaussianMixtureImputer(n_components=best, random_state=0)
    return chosen, {"selection_log_likelihood": scores, "n_components": best}


def select_training_rows(estimator: Any, split: Split, max_rows: int) -> tuple[np.ndarray, dict]:
    """Complete or Bernoulli(0.5)-masked training rows, whichever imputes the selection rows best.

    Returns the chosen variant of the (capped) training rows and the selection scores.
    """
    observed = np.random.default_rng(12345).random(split.selection.shape) >= MISSING_RATE
    hidden = np.where(observed, split.selection, np.nan)
    scores = {}
    for label, transform in (("complete rows", np.asarray), ("masked rows", masked)):
        rows = transform(split.selection_train[:max_rows])
        scores[label] = nrmse(split.selection, estimator.fit(rows).transform(hidden), observed)
    best = min(scores, key=scores.get)
    rows = split.train[:max_rows]
    return (rows if best == "complete rows" else masked(rows)), {
        "selection_nrmse": scores,
        "fitted_on": best,
        "rows": len(rows),
    }


def baselines(split: Split, settings: Settings) -> list[tuple[str, Any, np.ndarray, dict]]:
    """(label, unfitted estimator, training rows, notes) for every baseline."""
    mixture, mixture_notes = select_mixture(split, settings.mixture_components)
    knn = KNNImputer()
    knn_rows, knn_notes = select_training_rows(knn, split, settings.max_neighbour_rows)
    iterative = IterativeImputer(max_iter=settings.iterative_max_iter, random_state=0)
    it_rows, it_notes = select_training_rows(iterative, split, settings.max_neighbour_rows)
    return [
        ("exact Gaussian", GaussianImputer(), split.train, {}),
        (
            f"Gaussian mixture ({mixture_notes['n_components']})",
            mixture,
            split.train,
            mixture_notes,
        ),
        ("IterativeImputer (best fit)", iterative, it_rows, it_notes),
        ("KNNImputer (best fit)", knn, knn_rows, knn_notes),
        ("mean", SimpleImputer(), split.train, {}),
    ]


def posterior_matching(posterior: str, settings: Settings) -> PosteriorMatchingImputer:
    """A PosteriorMatchingImputer with the protocol's K (defaults unless ``pm_params``)."""
    return PosteriorMatchingImputer(
        posterior=posterior,
        n_samples=settings.n_samples,
        device=settings.device,
        random_state=0,
        **settings.pm_params,
    )


# --------------------------------------------------------------------------- evaluation
def evaluate(
    label: str, estimator: Any, rows: np.ndarray, split: Split, masks: list[np.ndarray], notes: dict
) -> dict:
    """Fit ``estimator`` on ``rows`` and score it on every trial's masks; a JSON-ready record."""
    start = time.perf_counter()
    estimator.fit(rows)
    fit_seconds = time.perf_counter() - start
    nrmses, lls, impute_seconds, score_seconds = [], [], 0.0, 0.0
    for observed in masks:
        start = time.perf_counter()
        imputed = estimator.transform(np.where(observed, split.test, np.nan))
        impute_seconds += time.perf_counter() - start
        nrmses.append(nrmse(split.test, imputed, observed))
        if hasattr(estimator, "score_conditional"):
            start = time.perf_counter()
            lls.append(float(np.mean(estimator.score_conditional(split.test, observed))))
            score_seconds += time.perf_counter() - start
    per_thousand = 1000.0 / (len(masks) * len(split.test))
    record = {
        "method": label,
        "nrmse": nrmses,
        "ll": lls or None,
        "fit_seconds": fit_seconds,
        "impute_seconds_per_1000_rows": impute_seconds * per_thousand,
        "score_seconds_per_1000_rows": score_seconds * per_thousand if lls else None,
        "notes": notes,
    }
    if isinstance(estimator, PosteriorMatchingImputer):
        record["epochs"] = estimator.n_iter_
        record["seconds_per_epoch"] = fit_seconds / estimator.n_iter_
        record["resolved_parameters"] = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in estimator.hyperparameters_.items()
        }
    return record


def run_dataset(name: str, settings: Settings) -> dict:
    """Every method on one dataset, on shared masks."""
    split = load_split(name, settings)
    masks = trial_masks(split.test.shape, settings.trials)
    results = [
        evaluate(f"PM ({p})", posterior_matching(p, settings), split.train, split, masks, {})
        for p in settings.posteriors
    ]
    results += [
        evaluate(label, estimator, rows, split, masks, notes)
        for label, estimator, rows, notes in baselines(split, settings)
    ]
    return {
        "name": name,
        "caveat": CAVEATS[name],
        "train_split": split.train_source,
        "train_rows": len(split.train),
        "test_rows": len(split.test),
        "features": split.train.shape[1],
        "results": results,
        "published": {k: list(v) for k, v in PUBLISHED[name].items()},
    }


def hardware(device: str) -> dict:
    """Where the run happened."""
    resolved = resolve_device(device)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(resolved),
        "gpu": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None,
        "load_average_1min": os.getloadavg()[0],
    }


def run(settings: Settings) -> dict:
    """The whole benchmark; a JSON-ready record."""
    start = time.perf_counter()
    datasets = [run_dataset(name, settings) for name in settings.datasets]
    return {
        "settings": asdict(settings),
        "versions": {
            "afa": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "hardware": hardware(settings.device),
        "datasets": datasets,
        "wall_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- report
def _mean_std(values: list[float] | None, digits: int) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def to_markdown(record: dict) -> str:
    """One table per dataset, with its caveat and the published reference rows."""
    settings, hw = record["settings"], record["hardware"]
    lines = [
        f"Bernoulli(0.5) test masks, {settings['trials']} trials (the same masks for every "
        f"method), K = {settings['n_samples']}; mean ± std over trials. LL = mean "
        "log p(x_u | x_o), total nats per row. Timings on "
        f"{hw['device']} with {hw['torch_threads']} torch threads; the whole run took "
        f"{record['wall_seconds'] / 60:.1f} min.",
    ]
    for dataset in record["datasets"]:
        lines += [
            "",
            f"**{dataset['name']}** ({dataset['features']} features; {dataset['caveat']}): "
            f"fitted on {dataset['train_rows']:,} rows of {dataset['train_split']}, tested on "
            f"{dataset['test_rows']:,} test rows.",
            "",
            "| method | NRMSE | LL | fit (s) | s/epoch | impute s/1k rows | LL s/1k rows |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in dataset["results"]:
            lines.append(
                f"| {r['method']} | {_mean_std(r['nrmse'], 3)} | {_mean_std(r['ll'], 3)} | "
                f"{r['fit_seconds']:.1f} | {_seconds(r.get('seconds_per_epoch'))} | "
                f"{_seconds(r['impute_seconds_per_1000_rows'])} | "
                f"{_seconds(r['score_seconds_per_1000_rows'])} |"
            )
        for method, (n_mean, n_std, ll_mean, ll_std) in dataset["published"].items():
            lines.append(
                f"| {method}, published (official splits) | {n_mean:.3f} ± {n_std:.3f} | "
                f"{ll_mean:.3f} ± {ll_std:.3f} | | | | |"
            )
    return "\n".join(lines) + "\n"


def parse_settings(argv: list[str] | None = None) -> tuple[Settings, Path, int, str]:
    """Settings from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full mode cost: on 2 CPU cores roughly 2-3 hours (three PM fits per dataset "
        "on all training rows, K = 512 over every test row); on one GPU far less.",
    )
    parser.add_argument("--quick", action="store_true", help="capped rows, PM autoregressive only")
    parser.add_argument("--datasets", nargs="+", choices=tuple(CAVEATS))
    parser.add_argument("--posteriors", nargs="+", choices=POSTERIORS)
    parser.add_argument("--max-train-rows", type=positive_int)
    parser.add_argument("--max-test-rows", type=positive_int)
    parser.add_argument("--n-samples", type=positive_int, help="K (default 512, as published)")
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument(
        "--pm-params",
        type=json_object(reserved=("posterior", "n_samples", "device", "random_state")),
        help="JSON object of PosteriorMatchingImputer parameters, e.g. '{\"max_iter\": 50}'",
    )
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        "datasets": tuple(args.datasets) if args.datasets else None,
        "posteriors": tuple(args.posteriors) if args.posteriors else None,
        "max_train_rows": args.max_train_rows,
        "max_test_rows": args.max_test_rows,
        "n_samples": args.n_samples,
        "pm_params": args.pm_params,
    }
    settings = Settings(
        **{
            **asdict(settings),
            **{k: v for k, v in overrides.items() if v is not None},
            "device": args.device,
        }
    )
    return settings, args.output_dir, args.threads, "uci_quick" if args.quick else "uci"


def main(argv: list[str] | None = None) -> None:
    settings, output_dir, threads, name = parse_settings(argv)
    torch.set_num_threads(threads)
    record = run(settings)
    write_results(record, to_markdown(record), output_dir, name)


if __name__ == "__main__":
    main()
