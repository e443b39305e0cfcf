"""Exceptions raised by afa."""

from __future__ import annotations

__all__ = ["TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient, or a failed factorisation.

    Raised instead of silently continuing with NaN weights, so that a tuning study can mark
    the trial as failed. The message says at which epoch and step it happened and what to try.
    """
