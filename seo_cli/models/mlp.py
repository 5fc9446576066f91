"""Multi-layer perceptron over numeric and categorical columns."""

from collections.abc import Sequence

import torch
from torch import nn

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError, dropout_rate, positive_ints
from seo_cli.models.heads import OutputHeads

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def build_mlp(
    in_features: int, hidden_sizes: Sequence[int], activation: str, dropout: float, key: str
) -> nn.Sequential:
    """Stack of ``Linear -> activation -> Dropout`` blocks, one per entry of ``hidden_sizes``.

    Args:
        key: config key of ``activation``, named in the error message.

    Raises:
        UserError: ``activation`` is not one of ``ACTIVATIONS``.
    """
    # Checked before the loop so that a bad name fails even when hidden_sizes is empty.
    if activation not in ACTIVATIONS:
        raise UserError(
            f"{key}={activation!r} is not a known activation; choose one of {', '.join(ACTIVATIONS)}."
        )
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        in_features = size
    return nn.Sequential(*layers)


class TabularEncoder(nn.Module):
    """Numeric features concatenated with one learned embedding per categorical column.

    Args:
        num_numeric: number of numeric columns (already scaled by the preprocessing).
        categorical_cardinalities: number of codes per column, the unknown slot 0 included
            (what ``InputSpec`` carries: known categories + 1).
        embedding_dim: size of each categorical embedding.
    """

    def __init__(
        self, num_numeric: int, categorical_cardinalities: Sequence[int], embedding_dim: int
    ) -> None:
        super().__init__()
        self.num_numeric = num_numeric
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, embedding_dim) for cardinality in categorical_cardinalities
        )
        self.out_features = num_numeric + embedding_dim * len(categorical_cardinalities)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [batch["numeric"]] if self.num_numeric else []
        if len(self.embeddings):
            categorical = batch["categorical"]
            parts += [embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings)]
        return torch.cat(parts, dim=-1)


class MLP(nn.Module):
    """Feed-forward network over the tabular columns, one output head per target.

    Args:
        inputs: shapes of the batch tensors; needs numeric or categorical columns.
        heads: target name -> output size (classes, or 1 for regression).
        hidden_sizes: width of each hidden layer.
        dropout: dropout after each hidden layer.
        activation: relu | gelu | silu | tanh.
        categorical_embedding_dim: embedding size of each categorical column.

    Raises:
        UserError: the data has no tabular columns, or the activation is unknown.
    """

    def __init__(
        self,
        inputs: InputSpec,
        heads: dict[str, int],
        hidden_sizes: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        activation: str = "relu",
        categorical_embedding_dim: int = 8,
    ) -> None:
        super().__init__()
        positive_ints("model.hidden_sizes", list(hidden_sizes))
        positive_ints("model.categorical_embedding_dim", categorical_embedding_dim)
        dropout_rate("model.dropout", dropout)
        if not inputs.has_tabular:
            raise UserError(
                "model=mlp needs numeric or categorical columns (data.numeric_columns, "
                "data.categorical_columns) but the data has none; choose model=textcnn or "
                "model=transformer for text-only data."
            )
        self.encoder = TabularEncoder(
            inputs.num_numeric, inputs.categorical_cardinalities, categorical_embedding_dim
        )
        self.body = build_mlp(
            self.encoder.out_features, hidden_sizes, activation, dropout, "model.activation"
        )
        self.heads = OutputHeads(hidden_sizes[-1] if hidden_sizes else self.encoder.out_features, heads)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.heads(self.body(self.encoder(batch)))
