"""Training-recipe comparisons: PosteriorMatchingImputer settings on one staged UCI dataset.

Each configuration (a JSON object of ``PosteriorMatchingImputer`` parameters, on top of
``random_state=0`` and the defaults) is fitted on the first ``--train-rows`` training rows and
judged on the first ``--test-rows`` test rows under one Bernoulli(0.5) mask (seed 0), next to
the exact Gaussian fitted on the same rows. This is a screening tool, cheaper than
``benchmarks.uci``: one mask and ``--n-samples`` 100 by default, so differences below about
0.01 NRMSE are noise.

Run from the repository root, for example::

    python -m benchmarks.recipe power --train-rows 5000 \\
        '{"max_iter": 300}' '{"max_iter": 300, "stop_gradient": false}'

Writes ``benchmarks/results/recipe_<dataset>.{json,md}`` (``--output-name`` changes it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from afa import PosteriorMatchingImputer, __version__
from afa.baselines import GaussianImputer
from afa.datasets import load_uci_maf
from afa.metrics import nrmse
from benchmarks._cli import json_object, positive_int
from benchmarks._results import write_results

RESULTS = Path(__file__).parent / "results"


def score(estimator, X_test: np.ndarray, observed: np.ndarray) -> tuple[float, float]:
    """NRMSE and mean log p(x_u | x_o) of a fitted estimator under one mask."""
    imputed = estimator.transform(np.where(observed, X_test, np.nan))
    ll = float(np.mean(estimator.score_conditional(X_test, observed)))
    return nrmse(X_test, imputed, observed), ll


def run(name: str, train_rows: int, test_rows: int, n_samples: int, configs: list[dict]) -> dict:
    """Fit the Gaussian and every configuration; a JSON-ready record."""
    data = load_uci_maf(name)
    train = data.train if data.train is not None else data.val
    X_train = np.asarray(train[:train_rows], dtype=np.float64)
    X_test = np.asarray(data.test[:test_rows], dtype=np.float64)
    observed = np.random.default_rng(0).random(X_test.shape) >= 0.5
    gaussian = score(GaussianImputer().fit(X_train), X_test, observed)
    results = []
    for params in configs:
        start = time.perf_counter()
        estimator = PosteriorMatchingImputer(random_state=0, n_samples=n_samples, **params)
        estimator.fit(X_train)
        fit_seconds = time.perf_counter() - start
        nrmse_value, ll = score(estimator, X_test, observed)
        results.append(
            {
                "params": params,
                "nrmse": nrmse_value,
                "ll": ll,
                "epochs": estimator.n_iter_,
                "fit_seconds": fit_seconds,
            }
        )
    return {
        "dataset": name,
        "train_rows": len(X_train),
        "test_rows": len(X_test),
        "n_samples": n_samples,
        "gaussian": {"nrmse": gaussian[0], "ll": gaussian[1]},
        "results": results,
        "versions": {"afa": __version__, "torch": torch.__version__},
        "torch_threads": torch.get_num_threads(),
    }


def to_markdown(record: dict) -> str:
    """The comparison as a table, the Gaussian first."""
    lines = [
        f"{record['dataset']}: {record['train_rows']:,} training rows, {record['test_rows']} test "
        f"rows, one Bernoulli(0.5) mask, K = {record['n_samples']}.",
        "",
        "| settings | NRMSE | LL | epochs | fit (s) |",
        "|---|---:|---:|---:|---:|",
        f"| exact Gaussian | {record['gaussian']['nrmse']:.4f} | {record['gaussian']['ll']:.3f} "
        "| | |",
    ]
    lines += [
        f"| `{json.dumps(r['params'])}` | {r['nrmse']:.4f} | {r['ll']:.3f} | {r['epochs']} | "
        f"{r['fit_seconds']:.0f} |"
        for r in record["results"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("power", "bsds300", "miniboone"))
    parser.add_argument(
        "configs",
        nargs="+",
        type=json_object(reserved=("n_samples", "random_state")),
        help="JSON objects of parameters",
    )
    parser.add_argument("--train-rows", type=positive_int, default=20_000)
    parser.add_argument("--test-rows", type=positive_int, default=500)
    parser.add_argument("--n-samples", type=positive_int, default=100)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--output-name")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = run(args.dataset, args.train_rows, args.test_rows, args.n_samples, args.configs)
    name = args.output_name or f"recipe_{args.dataset}"
    write_results(record, to_markdown(record), args.output_dir, name)


if __name__ == "__main__":
    main()
