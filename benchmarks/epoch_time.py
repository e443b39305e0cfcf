"""Seconds per training epoch of PosteriorMatchingImputer, per posterior family.

One epoch = one pass over 100,000 x 8 synthetic rows at batch 512 with 2 torch threads. For
each family the estimator is built by a first ``partial_fit`` (one epoch, not timed) and then
timed over ``--repeats`` further ``partial_fit`` calls; the median is reported, next to a plain
MLP VAE (no partial posterior) trained the same way.

Run: ``python -m benchmarks.epoch_time`` (writes benchmarks/results/epoch_time.{json,md}).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from afa import PosteriorMatchingImputer, __version__
from benchmarks._cli import positive_int
from benchmarks._results import write_results

POSTERIORS = ("gaussian", "autoregressive", "flow", "spline")
BASELINE = "plain VAE"
BAR_SECONDS = 4.0
BAR_POSTERIOR = "autoregressive"
BATCH_SIZE = 512
N_FEATURES = 8
RESULTS = Path(__file__).parent / "results"


def make_data(n_rows: int, seed: int = 0) -> np.ndarray:
    """Nonlinear mixture: a 2-D three-component mixture pushed through a random tanh/sin map."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    latent = centres[rng.integers(3, size=n_rows)] + 0.5 * rng.normal(size=(n_rows, 2))
    projection = rng.normal(size=(2, N_FEATURES))
    signal = np.tanh(latent @ projection) + np.sin(latent[:, :1] * projection[1])
    return (signal + 0.1 * rng.normal(size=signal.shape)).astype(np.float32)


class PlainVAE(nn.Module):
    """MLP VAE: two hidden layers of 256, diagonal Gaussian encoder and decoder."""

    def __init__(self, n_features: int, latent_dim: int, width: int = 256) -> None:
        super().__init__()

        def mlp(n_in: int, n_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                nn.Linear(width, n_out),
            )

        self.encoder = mlp(n_features, 2 * latent_dim)
        self.decoder = mlp(latent_dim, n_features)
        self.log_scale = nn.Parameter(torch.zeros(n_features))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO, averaged over the batch."""
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        posterior = torch.distributions.Normal(loc, log_scale.exp())
        z = posterior.rsample()
        prior = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
        likelihood = torch.distributions.Normal(self.decoder(z), self.log_scale.exp())
        kl = (posterior.log_prob(z) - prior.log_prob(z)).sum(-1)
        return (kl - likelihood.log_prob(x).sum(-1)).mean()


def plain_vae_epoch(X: np.ndarray, latent_dim: int) -> Callable[[], None]:
    """One-epoch trainer of a plain VAE on standardised ``X`` (Adam, shuffled batches)."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.as_tensor((X - X.mean(0)) / X.std(0))
    model = PlainVAE(X.shape[1], latent_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch() -> None:
        for rows in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            optimiser.zero_grad()
            model.loss(x[rows]).backward()
            optimiser.step()

    return epoch


def pm_epoch(X: np.ndarray, posterior: str) -> tuple[Callable[[], None], int]:
    """One-epoch trainer of PosteriorMatchingImputer (built here by a first epoch)."""
    imputer = PosteriorMatchingImputer(
        posterior=posterior, batch_size=BATCH_SIZE, early_stopping=False, random_state=0,
        device="cpu",
    )
    imputer.partial_fit(X)
    return (lambda: imputer.partial_fit(X)), imputer.hyperparameters_["latent_dim"]


def time_epochs(epoch: Callable[[], None], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``epoch``."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - start)
    return seconds


def run(n_rows: int, repeats: int) -> dict:
    """Time every posterior family and the plain VAE; return a JSON-ready record."""
    X = make_data(n_rows)
    timings: dict[str, list[float]] = {}
    latent_dim = N_FEATURES
    for posterior in POSTERIORS:
        epoch, latent_dim = pm_epoch(X, posterior)
        timings[posterior] = time_epochs(epoch, repeats)
    baseline = plain_vae_epoch(X, latent_dim)
    baseline()  # warm-up, like the building partial_fit above
    timings[BASELINE] = time_epochs(baseline, repeats)
    base_median = statistics.median(timings[BASELINE])
    return {
        "setup": {
            "rows": n_rows, "features": N_FEATURES, "batch_size": BATCH_SIZE,
            "latent_dim": latent_dim, "torch_threads": torch.get_num_threads(),
            "repeats": repeats, "afa": __version__, "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "load_average_1min_at_start": os.getloadavg()[0],
        },
        "results": [
            {
                "posterior": name, "seconds": seconds,
                "median_seconds": statistics.median(seconds),
                "ratio_to_plain_vae": statistics.median(seconds) / base_median,
            }
            for name, seconds in timings.items()
        ],
    }


def to_markdown(record: dict) -> str:
    """Markdown table of :func:`run`'s record."""
    setup = record["setup"]
    lines = [
        f"Seconds per epoch: {setup['rows']:,} x {setup['features']} rows, batch "
        f"{setup['batch_size']}, {setup['torch_threads']} torch threads, median of "
        f"{setup['repeats']} ({setup['machine']}; torch {setup['torch']}; 1-min load at start "
        f"{setup['load_average_1min_at_start']:.1f}).",
        "",
        "| posterior | median s / epoch | ratio to plain VAE | bar |",
        "|---|---:|---:|---|",
    ]
    for row in record["results"]:
        bar = ""
        if row["posterior"] == BAR_POSTERIOR:
            met = "met" if row["median_seconds"] <= BAR_SECONDS else "missed"
            bar = f"≤ {BAR_SECONDS:g} s: {met}"
        lines.append(
            f"| {row['posterior']} | {row['median_seconds']:.2f} | "
            f"{row['ratio_to_plain_vae']:.1f} | {bar} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=100_000)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = run(args.rows, args.repeats)
    write_results(record, to_markdown(record), args.output_dir, "epoch_time")


if __name__ == "__main__":
    main()
