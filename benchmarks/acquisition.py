"""Greedy acquisition on MNIST 16x16: lookahead vs sampling vs random (PM Fig. 7 protocol).

A Posterior-Matching VAE (MLP, Bernoulli decoder on the [0, 1] pixel intensities, Gaussian
partial posterior so entropies are analytic, latent 10 as in the reference code, training
masks with 0-20% of the pixels observed, uniformly, as in the reference code: the evidence
that acquisition from nothing produces) is fitted on the training images; a
:class:`afa.LookaheadAcquirer` per criterion (``"entropy"``, the paper's, and
``"variance"``) then trains its lookahead network on top of the same frozen imputer. Every
test image starts from nothing and acquires one pixel per step under each strategy. At step
``t`` the error is the RMSE over all 256 pixels, acquired pixels counting as zero error, of
the imputation (the mean of 50 decoder means), as in Posterior Matching's Fig. 7. The decision
time of each step is measured for the whole test batch, for every strategy, in this run.

Run from the repository root::

    python -m benchmarks.acquisition --quick   # 10,000 training images, 200 test, 10 steps
    python -m benchmarks.acquisition           # 60,000 training images, 1,000 test, 30 steps
    python -m benchmarks.acquisition --quick --posterior autoregressive --criteria variance \
        --imputer-epochs 400

    python -m benchmarks.acquisition --quick --posterior autoregressive --criteria variance \
        --sampling-criteria variance entropy --imputer-epochs 400   # about 35 min

``--posterior autoregressive`` fits the imputer with the autoregressive partial posterior (the
better imputer; entropies then become one-draw estimates, and entropy sampling needs one
sequential pass per latent dimension, about 110 s per step for 200 rows), ``--criteria``
keeps some criteria only (each gets a lookahead network and a sampling row),
``--sampling-criteria`` sets the criteria of the sampling rows on their own (the last
command adds the paper's explicit expected information gain, sampling (entropy), without
training an entropy network) and ``--imputer-epochs`` overrides the epochs.
Writes ``benchmarks/results/acquisition[_quick][_autoregressive].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import sklearn
import torch

from afa import LookaheadAcquirer, PosteriorMatchingImputer, __version__
from afa._torch import resolve_device
from afa.datasets import load_mnist
from benchmarks._cli import device_name, positive_int
from benchmarks._results import write_results

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Settings:
    train_rows: int
    test_rows: int
    n_steps: int
    posterior: str = "gaussian"
    latent_dim: int = 10
    hidden_layer_sizes: tuple[int, ...] = (256, 256)
    imputer_max_iter: int = 400
    lookahead_samples: int = 8
    # the variance head learns a finer function: 10 epochs left it 4.5% behind sampling
    lookahead_max_iter: dict[str, int] = field(
        default_factory=lambda: {"entropy": 10, "variance": 25}
    )
    imputation_samples: int = 50
    sampling_samples: int = 50
    # both the imputer's training masks and the lookahead network's training states
    observed_fraction: tuple[float, float] = (0.0, 0.2)
    heads: tuple[str, ...] = ("entropy", "mixture")
    criteria: tuple[str, ...] = ("entropy", "variance")
    # the criteria of the sampling rows; empty means the same as ``criteria``
    sampling_criteria: tuple[str, ...] = ()

    @property
    def sampled(self) -> tuple[str, ...]:
        """The criteria with a sampling row."""
        return self.sampling_criteria or self.criteria


QUICK = Settings(
    train_rows=10_000,
    test_rows=200,
    n_steps=10,
    imputer_max_iter=250,
    lookahead_max_iter={"entropy": 7, "variance": 20},
)
FULL = Settings(train_rows=60_000, test_rows=1_000, n_steps=30)


def fit_acquirers(
    settings: Settings, device: str, seed: int
) -> tuple[dict[str, LookaheadAcquirer], dict]:
    """One acquirer per criterion, sharing one fitted (then frozen) imputer.

    A lookahead network is trained for ``settings.criteria`` only; a criterion that only
    has a sampling row needs no training.
    """
    images, _ = load_mnist("train", size=16)
    images = images[: settings.train_rows].astype(np.float64)
    imputer = PosteriorMatchingImputer(
        likelihood="bernoulli",
        posterior=settings.posterior,
        latent_dim=settings.latent_dim,
        hidden_layer_sizes=settings.hidden_layer_sizes,
        training_mask="uniform",
        observed_fraction=settings.observed_fraction,
        max_iter=settings.imputer_max_iter,
        n_samples=settings.imputation_samples,
        device=device,
        random_state=seed,
    )
    start = time.perf_counter()
    imputer.fit(images)
    timings = {"imputer_fit_s": time.perf_counter() - start, "imputer_epochs": imputer.n_iter_}
    acquirers = {}
    for criterion in dict.fromkeys(settings.criteria + settings.sampled):
        trained = criterion in settings.criteria
        acquirer = LookaheadAcquirer(
            imputer=imputer,
            strategy="lookahead" if trained else "sampling",
            criterion=criterion,
            n_samples=settings.sampling_samples,
            observed_fraction=settings.observed_fraction,
            lookahead_samples=settings.lookahead_samples,
            max_iter=settings.lookahead_max_iter[criterion],
            random_state=seed,
        )
        start = time.perf_counter()
        acquirers[criterion] = acquirer.fit(images)
        if trained:
            timings[f"lookahead_{criterion}_fit_s"] = time.perf_counter() - start
            timings[f"lookahead_{criterion}_epochs"] = acquirer.n_iter_
    return acquirers, timings


def run_strategies(acquirers: dict[str, LookaheadAcquirer], settings: Settings) -> dict[str, dict]:
    test, _ = load_mnist("test", size=16)
    test = test[: settings.test_rows].astype(np.float64)
    runs: dict[str, tuple[str, str, str]] = {}
    for criterion in dict.fromkeys(settings.criteria + settings.sampled):
        heads = settings.heads if criterion == "entropy" else (settings.heads[0],)
        for head in heads if criterion in settings.criteria else ():
            label = head if criterion == "entropy" else criterion
            runs[f"lookahead ({label})"] = (criterion, "lookahead", head)
        if criterion in settings.sampled:
            runs[f"sampling ({criterion})"] = (criterion, "sampling", settings.heads[0])
    runs["random"] = (settings.criteria[0], "random", settings.heads[0])
    results = {}
    for name, (criterion, strategy, head) in runs.items():
        acquirer = acquirers[criterion].set_params(head=head)
        path = acquirer.acquire(test, n_steps=settings.n_steps, strategy=strategy)
        results[name] = {
            "criterion": criterion,
            "rmse": path.mean_errors().tolist(),
            "decision_s_per_step": float(np.median(path.decision_seconds)),
            "decision_s": path.decision_seconds.tolist(),
        }
        acquirer.set_params(head=settings.heads[0])
    return results


def markdown_table(results: dict[str, dict], settings: Settings, record: dict) -> str:
    """Strategies as rows, with the speed-ups of each lookahead row: against the sampling
    run of the same criterion and, when it ran, against sampling (entropy), the explicit
    expected information gain of the paper."""
    steps = sorted({0, 5, 10, settings.n_steps} & set(range(settings.n_steps + 1)))
    last = steps[-1]
    random_error = results["random"]["rmse"][last]
    versus_entropy = "entropy" in settings.sampled
    header = (
        "| strategy | "
        + " | ".join(f"RMSE @{t}" for t in steps)
        + f" | RMSE @{last} ÷ random | decision s/step | speed-up vs sampling, same criterion"
        + (" | speed-up vs sampling (entropy)" if versus_entropy else "")
        + " |\n"
    )
    lines = [header, "|---|" + "---|" * (len(steps) + 3 + versus_entropy) + "\n"]
    for name, result in results.items():
        seconds = result["decision_s_per_step"]
        speeds = [
            _speed_up(results.get(f"sampling ({c})"), seconds)
            if name.startswith("lookahead")
            else "-"
            for c in (result["criterion"], "entropy")[: 1 + versus_entropy]
        ]
        cells = " | ".join(f"{result['rmse'][t]:.4f}" for t in steps)
        relative = result["rmse"][last] / random_error
        lines.append(
            f"| {name} | {cells} | {relative:.3f} | {seconds:.4g} | {' | '.join(speeds)} |\n"
        )
    timings = record["timings"]
    networks = ", ".join(
        f"{c} {timings[f'lookahead_{c}_fit_s']:.0f} s ({timings[f'lookahead_{c}_epochs']} epochs)"
        for c in settings.criteria
    )
    lines.append(
        f"\nMNIST 16x16: {settings.train_rows:,} training images, the first "
        f"{settings.test_rows:,} test images, {settings.n_steps} steps from nothing; batch of "
        f"{settings.test_rows:,} rows per decision; {record['hardware']['device']}, "
        f"{record['hardware']['torch_threads']} threads. Imputer ({settings.posterior} partial "
        f"posterior) fit "
        f"{timings['imputer_fit_s']:.0f} s ({timings['imputer_epochs']} epochs); lookahead "
        f"networks: {networks}.{_comparisons(settings)}\n"
    )
    return "".join(lines)


def _comparisons(settings: Settings) -> str:
    """Which sampling run each lookahead row is compared with."""
    pairs = {
        "entropy": "the lookahead (entropy) and (mixture) rows with sampling (entropy)",
        "variance": "lookahead (variance) with sampling (variance)",
    }
    compared = [pairs[c] for c in settings.criteria if c in settings.sampled]
    if "entropy" in settings.sampled and settings.criteria != ("entropy",):
        compared.append("every lookahead row also with sampling (entropy)")
    return " Compared: " + "; ".join(compared) + "." if compared else ""


def _speed_up(sampling: dict | None, seconds: float) -> str:
    return "-" if sampling is None else f"{sampling['decision_s_per_step'] / seconds:.0f}x"


def plot(results: dict[str, dict], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name, result in results.items():
        axis.plot(range(len(result["rmse"])), result["rmse"], marker="o", markersize=3, label=name)
    axis.set_xlabel("pixels acquired")
    axis.set_ylabel("RMSE over all 256 pixels")
    axis.set_title(f"Greedy acquisition, MNIST 16x16 ({settings.test_rows} test images)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _with_options(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the command line's overrides."""
    overrides = {"posterior": args.posterior}
    if args.criteria:
        overrides["criteria"] = tuple(args.criteria)
    if args.sampling_criteria:
        overrides["sampling_criteria"] = tuple(args.sampling_criteria)
    if args.imputer_epochs:
        overrides["imputer_max_iter"] = args.imputer_epochs
    return replace(settings, **overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k train, 200 test, 10 steps")
    parser.add_argument(
        "--posterior",
        choices=("gaussian", "autoregressive"),
        default="gaussian",
        help="the imputer's partial posterior (entropies are exact only for gaussian)",
    )
    parser.add_argument(
        "--criteria",
        nargs="+",
        choices=("entropy", "variance"),
        help="the criteria with a lookahead network (and, by default, a sampling row)",
    )
    parser.add_argument(
        "--sampling-criteria",
        nargs="+",
        choices=("entropy", "variance"),
        help="the criteria with a sampling row (default: --criteria)",
    )
    parser.add_argument("--imputer-epochs", type=positive_int, help="override the imputer's epochs")
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = _with_options(QUICK if args.quick else FULL, args)
    device = resolve_device(args.device)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    acquirers, timings = fit_acquirers(settings, args.device, args.seed)
    results = run_strategies(acquirers, settings)
    record = {
        "settings": asdict(settings),
        "versions": {
            "afa": __version__,
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
        },
        "hardware": {
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_at_start": load,
            "platform": platform.platform(),
        },
        "timings": {**timings, "total_s": time.perf_counter() - start},
        "results": results,
    }
    name = "acquisition" + ("_quick" if args.quick else "")
    if settings.posterior != "gaussian":
        name += f"_{settings.posterior}"
    write_results(record, markdown_table(results, settings, record), args.output_dir, name)
    plot(results, settings, args.output_dir / f"{name}.png")


if __name__ == "__main__":
    main()
