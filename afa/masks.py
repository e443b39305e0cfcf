"""Observation masks: training masks (torch) and missingness for benchmarks (NumPy).

Convention everywhere in afa: ``True`` (or 1) means *observed*.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TRAINING_MASKS", "bernoulli_mask", "mcar_mask", "uniform_mask"]


def bernoulli_mask(
    shape: tuple[int, int], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Each entry observed independently with probability 0.5 (the reference code's masks).

    Examples
    --------
    >>> bernoulli_mask((2, 3), torch.Generator().manual_seed(0)).dtype
    torch.bool
    """
    return torch.rand(shape, generator=generator, device=device) < 0.5


def uniform_mask(
    shape: tuple[int, int], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per row, ``k ~ U{0, …, d-1}`` entries observed, chosen uniformly at random.

    Examples
    --------
    >>> int(uniform_mask((5, 4), torch.Generator().manual_seed(0)).sum(1).max()) < 4
    True
    """
    n_rows, n_features = shape
    n_observed = torch.randint(n_features, (n_rows, 1), generator=generator, device=device)
    ranks = torch.rand(shape, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < n_observed


TRAINING_MASKS = {"bernoulli": bernoulli_mask, "uniform": uniform_mask}


def mcar_mask(
    shape: tuple[int, int], missing_rate: float, random_state: int | np.random.Generator
) -> np.ndarray:
    """Missing completely at random: each entry hidden independently with ``missing_rate``.

    Returns a boolean array, ``True`` where the entry stays observed.

    Examples
    --------
    >>> mcar_mask((1000, 2), 0.5, 0).mean().round(1)
    np.float64(0.5)
    """
    if not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"missing_rate must lie in [0, 1]; got {missing_rate}.")
    rng = np.random.default_rng(random_state)
    return rng.random(shape) >= missing_rate
