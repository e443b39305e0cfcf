"""Building blocks shared by afa's networks: residual MLPs, MADE layers and masked inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ResidualMLP", "MADE", "masked_input"]


def masked_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x * mask`` and ``mask``: the ``2d`` input every afa encoder reads.

    Entries with ``mask == False`` are replaced by zero before concatenation, so NaN in
    unobserved positions never reaches a network.

    Parameters
    ----------
    x : Tensor of shape (..., d)
        Values; unobserved entries may hold anything, NaN included.
    mask : bool Tensor of shape (..., d)
        ``True`` where the entry is observed.

    Returns
    -------
    Tensor of shape (..., 2 * d)

    Examples
    --------
    >>> masked_input(torch.tensor([[1.0, float("nan")]]), torch.tensor([[True, False]]))
    tensor([[1., 0., 1., 0.]])
    """
    mask_float = mask.to(x.dtype)
    return torch.cat([torch.where(mask, x, torch.zeros_like(x)), mask_float], dim=-1)


class _ResidualLayer(nn.Module):
    """``skip(h) + W · dropout(relu(h))``; the skip is linear when the widths differ."""

    def __init__(self, in_width: int, out_width: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(in_width, out_width))
        self.skip = nn.Identity() if in_width == out_width else nn.Linear(in_width, out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.inner(x)


class ResidualMLP(nn.Module):
    """An MLP with residual hidden layers (``h + W · relu(h)``) and a linear shortcut.

    The output is ``head(relu(h)) + shortcut(x)``: the linear shortcut makes linear-Gaussian
    structure (factor analysis, linear regression between features) easy to represent,
    which matters on small tables.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden_layer_sizes : sequence of int
        Width of each hidden layer, as in scikit-learn's ``MLPRegressor``: a linear stem maps
        the input to the first width, and every further layer adds a residual update.
    dropout : float, default=0.0
        Dropout probability before every residual update.

    Examples
    --------
    >>> ResidualMLP(4, 3, (16, 16))(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_layer_sizes: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = list(hidden_layer_sizes)
        self.stem = nn.Linear(in_features, widths[0])
        self.layers = nn.Sequential(
            *(_ResidualLayer(a, b, dropout) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Linear(widths[-1], out_features)
        self.shortcut = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.layers(self.stem(x)))) + self.shortcut(x)


class _MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed connectivity mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The masked linear map, restricted to output ``rows`` when given."""
        return nn.functional.linear(x, self.weight[rows] * self.mask[rows], self.bias[rows])


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation, conditioned on a context vector.

    Output block ``i`` (``n_outputs_per_feature`` values) depends only on ``inputs[..., :i]``
    and on the context, so an autoregressive density is evaluated in one pass. Hidden units
    of degree 0 see only the context, which makes the first output context-dependent.
    The context is projected once per row and broadcast over any leading sample dimensions.

    Parameters
    ----------
    n_features : int
        Number of autoregressive variables.
    context_features : int
        Width of the context vector.
    hidden_features : int
        Width of the masked hidden layers.
    n_outputs_per_feature : int
        Values produced for every variable.
    n_blocks : int, default=2
        Masked residual blocks.

    Examples
    --------
    >>> made = MADE(3, context_features=5, hidden_features=8, n_outputs_per_feature=2)
    >>> made(torch.zeros(7, 4, 3), torch.zeros(4, 5)).shape
    torch.Size([7, 4, 3, 2])
    """

    def __init__(
        self,
        n_features: int,
        context_features: int,
        hidden_features: int,
        n_outputs_per_feature: int,
        n_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_outputs_per_feature = n_outputs_per_feature
        input_degrees = torch.arange(1, n_features + 1)
        hidden_degrees = torch.arange(hidden_features) % n_features
        output_degrees = input_degrees.repeat_interleave(n_outputs_per_feature)
        self.input_layer = _MaskedLinear(hidden_degrees[:, None] >= input_degrees[None, :])
        self.context_layer = nn.Linear(context_features, hidden_features)
        hidden_mask = hidden_degrees[:, None] >= hidden_degrees[None, :]
        self.blocks = nn.ModuleList(
            nn.ModuleList([_MaskedLinear(hidden_mask), _MaskedLinear(hidden_mask)])
            for _ in range(n_blocks)
        )
        self.output_layer = _MaskedLinear(output_degrees[:, None] > hidden_degrees[None, :])

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor, feature: int | None = None
    ) -> torch.Tensor:
        """Return outputs of shape ``inputs.shape + (n_outputs_per_feature,)``.

        ``context`` has shape ``(n, context_features)`` and ``inputs`` ``(..., n, n_features)``.
        With ``feature`` given, only that variable's block is computed (sequential sampling
        needs one block per pass): shape ``inputs.shape[:-1] + (n_outputs_per_feature,)``.
        """
        hidden = self.input_layer(inputs) + self.context_layer(context)
        for first, second in self.blocks:
            hidden = hidden + second(torch.relu(first(torch.relu(hidden))))
        if feature is not None:
            return self.output_layer(torch.relu(hidden), self._output_rows(feature))
        outputs = self.output_layer(torch.relu(hidden))
        return outputs.unflatten(-1, (self.n_features, self.n_outputs_per_feature))

    def _output_rows(self, feature: int) -> slice:
        width = self.n_outputs_per_feature
        return slice(feature * width, (feature + 1) * width)
