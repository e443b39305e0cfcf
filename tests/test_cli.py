"""Tests of the afa command and the demo's pieces (the full demo is not run here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.impute import SimpleImputer

import afa
from afa.baselines import GaussianImputer
from afa.cli import build_parser, main
from afa.demo import COLUMNS, default_methods, evaluate, format_table
from afa.masks import mcar_mask


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"afa {afa.__version__}"


def test_python_m_afa_version():
    result = subprocess.run(
        [sys.executable, "-m", "afa", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"afa {afa.__version__}"


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_threads_must_be_a_positive_integer(capsys, threads):
    with pytest.raises(SystemExit) as stop:
        main(["--threads", threads, "demo"])
    assert stop.value.code == 2
    assert f"--threads: must be a positive integer; got '{threads}'" in capsys.readouterr().err


def test_demo_arguments():
    args = build_parser().parse_args(["-v", "demo", "--random-state", "7"])
    assert (args.command, args.random_state, args.verbose) == ("demo", 7, True)


def test_default_methods_use_defaults_and_the_seed():
    methods = default_methods(random_state=3)
    pm = methods["PM (autoregressive)"]
    assert pm.random_state == 3
    assert pm.get_params()["max_iter"] == "auto"
    assert {"exact Gaussian", "SimpleImputer (mean)", "KNNImputer", "IterativeImputer"} <= set(
        methods
    )


def test_evaluate_and_format_on_a_tiny_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)) @ np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.3], [0.0, 0.0, 1.0]])
    observed = mcar_mask((20, 3), 0.5, 0)
    methods = {"exact Gaussian": GaussianImputer(), "mean": SimpleImputer()}
    results = evaluate(methods, X[:60], X[60:], observed)
    assert list(results.columns) == COLUMNS
    assert list(results["method"]) == ["exact Gaussian", "mean"]
    assert results.loc[0, "NRMSE"] < results.loc[1, "NRMSE"]
    assert np.isfinite(results.loc[0, "mean log p(x_u|x_o)"])
    assert np.isnan(results.loc[1, "mean log p(x_u|x_o)"])
    lines = format_table(results).splitlines()
    assert len(lines) == 4
    assert lines[3].split(" | ")[2] == "—"
