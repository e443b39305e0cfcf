"""Argument types shared by the benchmarks' command lines: bad values stop at parsing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from afa._torch import resolve_device
from afa.cli import positive_int

__all__ = ["device_name", "json_object", "positive_int"]


def device_name(text: str) -> str:
    """``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` that this machine can use."""
    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def json_object(reserved: tuple[str, ...] = ()) -> Callable[[str], dict]:
    """A JSON object of estimator parameters, none of them one the benchmark sets itself."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r}")
        taken = sorted(set(value) & set(reserved))
        if taken:
            raise argparse.ArgumentTypeError(
                f"{taken} are set by the benchmark (use its own options); got {text!r}"
            )
        return value

    return parse
