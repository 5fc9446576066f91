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
        outputs = {}
        for name, layer in zip(self.names, self.layers, strict=True):
            out = layer(features)
            outputs[name] = out.squeeze(-1) if layer.out_features == 1 else out
        return outputs
