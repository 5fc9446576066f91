"""Convolutional text classifier (Kim, 2014) over token ids."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError, dropout_rate, positive_ints
from seo_cli.models.heads import OutputHeads


class TextCNNEncoder(nn.Module):
    """Token embeddings, one Conv1d + ReLU per kernel size, max over time of the real tokens.

    Every window starts at a real token; windows that run past the end of the text see zero
    vectors, whether that is padding or the implicit right padding of ``max(kernel_sizes) - 1``.
    So the features of a text do not depend on how much padding its batch has, and texts shorter
    than a kernel still get features. A text with no tokens gets all-zero features.

    Args:
        vocab_size: number of token ids.
        pad_id: token id that marks padding.
        embedding_dim: size of a token embedding.
        num_filters: output channels per kernel size.
        kernel_sizes: window widths in tokens.
    """

    def __init__(
        self, vocab_size: int, pad_id: int, embedding_dim: int, num_filters: int, kernel_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_kernel = max(kernel_sizes)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, k) for k in kernel_sizes)
        self.out_features = num_filters * len(kernel_sizes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != self.pad_id  # [B, L]
        # Zeroing by the mask, not only by padding_idx, keeps pad positions at zero even if the
        # pad row of the table was changed (loaded weights, weight decay of a custom optimizer).
        x = self.embedding(tokens) * mask.unsqueeze(-1)
        x = F.pad(x.transpose(1, 2), (0, self.max_kernel - 1))  # [B, E, L + max_kernel - 1]
        length = tokens.shape[1]
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))[:, :, :length]  # window t starts at token t
            # ReLU outputs are >= 0, so filling masked windows with 0 leaves the max over the
            # real windows unchanged and gives 0 (not -inf) for a text with no tokens.
            pooled.append(h.masked_fill(~mask.unsqueeze(1), 0.0).amax(dim=2))
        return torch.cat(pooled, dim=1)


class TextCNN(nn.Module):
    """TextCNN encoder, dropout, one output head per target.

    Args:
        inputs: shapes of the batch tensors; needs text.
        heads: target name -> output size (classes, or 1 for regression).
        embedding_dim: size of a token embedding.
        num_filters: convolution channels per kernel size.
        kernel_sizes: window widths in tokens.
        dropout: dropout on the pooled features.

    Raises:
        UserError: the data has no text column, or ``kernel_sizes`` is empty.
    """

    def __init__(
        self,
        inputs: InputSpec,
        heads: dict[str, int],
        embedding_dim: int = 64,
        num_filters: int = 64,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        for key, value in (("embedding_dim", embedding_dim), ("num_filters", num_filters), ("kernel_sizes", list(kernel_sizes))):
            positive_ints(f"model.{key}", value)
        dropout_rate("model.dropout", dropout)
        if not inputs.has_text:
            raise UserError(
                "model=textcnn needs a text column (data.text_columns) but the data has none; "
                "choose model=mlp for numeric and categorical data."
            )
        if not kernel_sizes:
            raise UserError("model.kernel_sizes is empty; give at least one window width, e.g. [3,4,5].")
        self.encoder = TextCNNEncoder(
            inputs.vocab_size, inputs.pad_id, embedding_dim, num_filters, kernel_sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.heads = OutputHeads(self.encoder.out_features, heads)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.heads(self.dropout(self.encoder(batch["tokens"])))
