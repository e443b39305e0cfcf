"""The ``afa`` command: ``afa demo`` prints the demo's results table."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from afa import __version__
from afa.demo import format_table, run_demo

__all__ = ["build_parser", "main", "positive_int"]

DEFAULT_THREADS = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``afa`` command.

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> build_parser().parse_args(["demo", "--random-state", "3"]).random_state
    3
    """
    parser = argparse.ArgumentParser(
        prog="afa",
        description="Imputation, arbitrary conditional likelihoods and active feature acquisition.",
    )
    parser.add_argument("--version", action="version", version=f"afa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=DEFAULT_THREADS,
        help=f"torch CPU threads (default: {DEFAULT_THREADS})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="impute a bundled real table with Posterior Matching and baselines",
        description="Fit Posterior Matching imputers and scikit-learn baselines on the "
        "wine table, hide half of the test entries at random and print a markdown "
        "table of NRMSE, conditional log-likelihood and timings.",
    )
    demo.add_argument("--random-state", type=int, default=0, help="seed (default: 0)")
    demo.set_defaults(run=_demo)
    return parser


def positive_int(text: str) -> int:
    """An argparse type: a positive integer, or a usage error naming the value.

    Examples
    --------
    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> None:
    print(format_table(run_demo(random_state=args.random_state)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``afa`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status.
    """
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    args.run(args)
    return 0
