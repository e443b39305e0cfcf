"""UCI arbitrary-conditioning benchmark (DESIGN §4; PM Table 2 protocol), on the staged data.

Each method is fitted once per dataset: POWER (Jan-Jun 2007 subset) on its train split,
MINIBOONE on its official validation split (its train split is not staged), and evaluated on
the first ``--max-test-rows`` test rows. Each of 5 trials hides every test entry with
probability 0.5 (one Bernoulli mask per row per trial) and records

- NRMSE: per feature, RMSE over the hidden entries / population std over the test rows used,
  averaged over features (:func:`afa.metrics.nrmse`);
- LL: mean over rows of log p(x_u | x_o), total nats per row (methods with a density only).

The report is mean ± std over the trials. The published protocol uses K = 512 samples; the
default here is ``--n-samples 100`` so that a CPU run stays short. PM's LL is a difference
of two importance-sampled estimates, so its small-K bias can go either way.

Run: ``AFA_DATA=../shared/data python benchmarks/uci_imputation.py`` (writes
benchmarks/results/uci_imputation.{json,md}).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import write_results
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer

from afa import PosteriorMatchingImputer, __version__
from afa.datasets import load_uci_maf
from afa.demo import ITERATIVE_MAX_ITER, GaussianImputer
from afa.metrics import nrmse

DATASETS = ("power", "miniboone")
N_TRIALS = 5
MISSING_RATE = 0.5
RESULTS = Path(__file__).parent / "results"


def splits(name: str, max_test_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows and capped test rows (float64) of one dataset."""
    data = load_uci_maf(name)
    train = data.train if data.train is not None else data.val
    return train.astype(np.float64), data.test[:max_test_rows].astype(np.float64)


def methods(n_samples: int, posteriors: list[str]) -> dict[str, Any]:
    """PM with default settings (``n_samples`` = K) and the baselines."""
    chosen: dict[str, Any] = {
        f"PM ({p})": PosteriorMatchingImputer(posterior=p, n_samples=n_samples, random_state=0)
        for p in posteriors
    }
    chosen["exact Gaussian"] = GaussianImputer()
    chosen["IterativeImputer"] = IterativeImputer(random_state=0, max_iter=ITERATIVE_MAX_ITER)
    chosen["KNNImputer"] = KNNImputer()
    return chosen


def trial_scores(method: Any, X_test: np.ndarray, trial: int) -> tuple[float, float]:
    """NRMSE and mean log-likelihood (NaN without a density) under one trial's masks."""
    observed = np.random.default_rng(trial).random(X_test.shape) >= MISSING_RATE
    imputed = method.transform(np.where(observed, X_test, np.nan))
    log_likelihood = (
        float(np.mean(method.score_conditional(X_test, observed)))
        if hasattr(method, "score_conditional")
        else float("nan")
    )
    return nrmse(X_test, imputed, observed), log_likelihood


def evaluate(name: str, method: Any, X_train: np.ndarray, X_test: np.ndarray) -> dict:
    """Fit ``method`` and score it over the trials; a JSON-ready record."""
    start = time.perf_counter()
    method.fit(X_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = np.array([trial_scores(method, X_test, trial) for trial in range(N_TRIALS)])
    return {
        "method": name,
        "nrmse": scores[:, 0].tolist(),
        "ll": None if np.isnan(scores[:, 1]).any() else scores[:, 1].tolist(),
        "fit_seconds": fit_seconds,
        "evaluate_seconds": time.perf_counter() - start,
    }


def _mean_std(values: list[float] | None, digits: int) -> str:
    if values is None:
        return "—"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def to_markdown(record: dict) -> str:
    """Markdown tables (one per dataset) of the benchmark record."""
    setup = record["setup"]
    lines = [
        f"UCI arbitrary conditioning: Bernoulli(0.5) test masks, {setup['trials']} trials, "
        f"K = {setup['n_samples']} samples, mean ± std over trials. LL = mean log p(x_u|x_o), "
        "total nats per row.",
    ]
    for dataset in record["datasets"]:
        lines += [
            "",
            f"**{dataset['name']}**: fitted on {dataset['train_split']} "
            f"({dataset['train_rows']:,} rows), tested on the first "
            f"{dataset['test_rows']:,} test rows, {dataset['features']} features.",
            "",
            "| method | NRMSE | LL (nats) | fit (s) | 5 trials (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['method']} | {_mean_std(r['nrmse'], 3)} | {_mean_std(r['ll'], 3)} | "
            f"{r['fit_seconds']:.1f} | {r['evaluate_seconds']:.1f} |"
            for r in dataset["results"]
        ]
    return "\n".join(lines) + "\n"


def run(names: list[str], max_test_rows: int, n_samples: int, posteriors: list[str]) -> dict:
    """Run the benchmark on every dataset in ``names``."""
    datasets = []
    for name in names:
        X_train, X_test = splits(name, max_test_rows)
        results = [
            evaluate(label, method, X_train, X_test)
            for label, method in methods(n_samples, posteriors).items()
        ]
        datasets.append({
            "name": name,
            "train_split": "train" if name != "miniboone" else "val (train not staged)",
            "train_rows": len(X_train),
            "test_rows": len(X_test),
            "features": X_train.shape[1],
            "results": results,
        })
    setup = {
        "trials": N_TRIALS, "n_samples": n_samples, "max_test_rows": max_test_rows,
        "torch_threads": torch.get_num_threads(), "afa": __version__,
        "torch": torch.__version__,
    }
    return {"setup": setup, "datasets": datasets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--max-test-rows", type=int, default=2000)
    parser.add_argument(
        "--n-samples", type=int, default=100, help="K (default 100 for CPU; the paper uses 512)"
    )
    parser.add_argument("--posteriors", nargs="+", default=["autoregressive"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = run(args.datasets, args.max_test_rows, args.n_samples, args.posteriors)
    write_results(record, to_markdown(record), args.output_dir, "uci_imputation")


if __name__ == "__main__":
    main()
