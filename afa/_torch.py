"""Devices, generators and array <-> tensor conversion."""

from __future__ import annotations

import contextlib
import copy
import numbers
from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "cpu_copy",
    "embed_block",
    "resolve_device",
    "seeded",
    "standard_normal",
    "to_tensor",
]


def resolve_device(name: str) -> torch.device:
    """Map ``"auto"``, ``"cpu"`` or ``"cuda"`` (optionally ``"cuda:1"``) to a device.

    ``"auto"`` picks CUDA when it is available. Asking for CUDA without it is an error. A
    CUDA device always carries its index (the current device's when none is given), so it
    compares equal to the device of the tensors made on it.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str) or name.split(":")[0] not in {"cpu", "cuda"}:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {name!r}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r} was requested but CUDA is not available here (an estimator "
            "fitted on a GPU runs here after set_params(device='cpu'))."
        )
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy ``array`` into a float32 tensor on ``device`` (safe for read-only arrays)."""
    return torch.tensor(np.asarray(array, dtype=np.float32), device=device)


def cpu_copy(value: object) -> object:
    """A copy of ``value`` with every tensor in it (nested in dicts, lists, tuples) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(item) for item in value)
    return copy.deepcopy(value)


def call_seed(random_state: int | np.random.RandomState | None) -> int | None:
    """The seed of one call's draws from a ``random_state`` argument.

    ``None`` stays ``None`` (the estimator's own seed, fixed at fit time); an int or numpy
    integer is reduced modulo ``2**31 - 1``; a ``RandomState`` gives its next integer.
    Anything else is a ``ValueError``.
    """
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state) % (2**31 - 1)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise ValueError(
        f"random_state must be None, an integer or a numpy RandomState; got {random_state!r}."
    )


def standard_normal(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Standard-normal noise from a local generator seeded with ``seed`` (drawn on the CPU)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's global generators seeded, restoring their state afterwards.

    Weight initialisation and dropout draw from torch's global generators; this makes them
    depend on ``seed`` alone without leaking into (or being affected by) the caller's state.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.random.manual_seed(seed)
        yield


def embed_block(matrix: torch.Tensor, keep: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Per row of ``keep`` (shape ``(n, d)``), ``matrix`` restricted to the kept block.

    Returns ``(n, d, d)``: ``matrix[i, j]`` where both ``i`` and ``j`` are kept, ``fill`` on
    the other diagonal entries and zero elsewhere. The block's Cholesky factor, inverse and
    determinant are then those of a batch of full matrices, whatever each row keeps.
    """
    kept = keep.to(matrix.dtype)
    outer = kept.unsqueeze(-1) * kept.unsqueeze(-2)
    return matrix * outer + torch.diag_embed(fill * (1.0 - kept))
