"""One linear output layer per prediction target."""

import torch
from torch import nn


class OutputHeads(nn.Module):
    """Maps a shared feature vector to one output per target.

    Args:
        in_features: size of the feature vector every head reads.
        heads: target name -> output size (number of classes, 2 for binary; 1 for regression).

    ``forward`` returns logits ``[B, K]`` for a classification head and a ``[B]`` tensor for a
    regression head (size 1), the shapes the losses and metrics expect.
    """

    def __init__(self, in_features: int, heads: dict[str, int]) -> None:
        super().__init__()
        # Layers are kept by position: a target may be named like a Module attribute ("type") or hold a
        # dot, which ModuleDict keys cannot.
        self.names = list(heads)
        self.layers = nn.ModuleList(nn.Linear(in_features, size) for size in heads.values())

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        # One matrix product for every head (their weights stacked), cut into each head's columns: a step
        # launches 3 kernels forward and 3 backward instead of 3 per head; each weight's gradient is a
        # contiguous block of the stacked one, so no copy is made.
        layers = self.layers
        if len(layers) == 1:
            joined = layers[0](features)
        else:
            weight = torch.cat([layer.weight for layer in layers])
            joined = nn.functional.linear(features, weight, torch.cat([layer.bias for layer in layers]))
        parts = joined.split([layer.out_features for layer in layers], dim=-1)
        return {
            name: out.squeeze(-1) if layer.out_features == 1 else out
            for name, layer, out in zip(self.names, layers, parts, strict=True)
        }
