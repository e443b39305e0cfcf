"""Unit tests for afa.nn: masked inputs, residual MLPs and MADE."""

from __future__ import annotations

import pytest
import torch

from afa.nn import MADE, ResidualMLP, masked_input


def test_masked_input_zeros_unobserved_and_appends_mask():
    x = torch.tensor([[1.5, float("nan"), -2.0], [float("inf"), 3.0, float("nan")]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    out = masked_input(x, mask)
    expected = torch.tensor([[1.5, 0.0, -2.0, 1.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0, 1.0, 0.0]])
    assert out.shape == (2, 6)
    assert torch.isfinite(out).all()
    assert torch.equal(out, expected)


def test_masked_input_leading_dims_and_dtype():
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    mask = torch.rand(5, 3, 4) < 0.5
    out = masked_input(x, mask)
    assert out.shape == (5, 3, 8)
    assert out.dtype == torch.float64
    assert torch.equal(out[..., :4], torch.where(mask, x, torch.zeros_like(x)))
    assert torch.equal(out[..., 4:], mask.double())


def test_masked_input_no_nan_gradient_from_unobserved():
    x = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    masked_input(x, mask).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("sizes", [(8,), (8, 8), (8, 16, 4)])
def test_residual_mlp_shapes(sizes):
    net = ResidualMLP(6, 3, sizes)
    assert net(torch.zeros(7, 6)).shape == (7, 3)
    assert net(torch.zeros(2, 7, 6)).shape == (2, 7, 3)
    assert net.stem.out_features == sizes[0]
    assert net.head.in_features == sizes[-1]
    assert len(net.layers) == len(sizes) - 1


def test_residual_mlp_identity_skip_when_widths_match():
    net = ResidualMLP(3, 2, (8, 8, 4))
    assert isinstance(net.layers[0].skip, torch.nn.Identity)
    assert isinstance(net.layers[1].skip, torch.nn.Linear)


def test_residual_mlp_dropout_only_in_train_mode():
    torch.manual_seed(0)
    net = ResidualMLP(4, 4, (32, 32), dropout=0.5)
    x = torch.randn(16, 4)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def _made_jacobians(made, inputs, context):
    jac_inputs, jac_context = torch.autograd.functional.jacobian(
        lambda z, c: made(z, c), (inputs, context)
    )
    return jac_inputs, jac_context


@pytest.mark.parametrize("n_blocks", [0, 2])
def test_made_is_autoregressive(n_blocks):
    torch.manual_seed(0)
    n_features, n_out = 4, 3
    made = MADE(
        n_features,
        context_features=5,
        hidden_features=16,
        n_outputs_per_feature=n_out,
        n_blocks=n_blocks,
    )
    inputs = torch.randn(1, n_features)
    context = torch.randn(1, 5)
    assert made(inputs, context).shape == (1, n_features, n_out)
    jac_inputs, jac_context = _made_jacobians(made, inputs, context)
    # jac_inputs: (1, n_features, n_out, 1, n_features)
    jac_inputs = jac_inputs[0, :, :, 0, :]
    for i in range(n_features):
        for j in range(n_features):
            block = jac_inputs[i, :, j]
            if j >= i:
                assert torch.all(block == 0), f"output {i} depends on input {j}"
    # ... and it is not trivially zero: output i depends on the previous input
    for i in range(1, n_features):
        assert jac_inputs[i, :, i - 1].abs().max() > 0
    # output 0 depends on the context alone
    assert jac_context[0, 0, :, 0, :].abs().max() > 0


def test_made_broadcasts_context_over_samples():
    torch.manual_seed(0)
    made = MADE(3, context_features=5, hidden_features=8, n_outputs_per_feature=2)
    inputs, context = torch.randn(7, 4, 3), torch.randn(4, 5)
    out = made(inputs, context)
    assert out.shape == (7, 4, 3, 2)
    for k in range(7):
        assert torch.allclose(out[k], made(inputs[k], context), atol=1e-6)
