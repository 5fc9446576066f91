"""Small pre-norm transformer encoder over token ids, mean-pooled into one vector per text."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError, dropout_rate, positive_ints
from seo_cli.models.heads import OutputHeads


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert d_model % num_heads == 0, "callers check this and raise a UserError"
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``attn_mask``: bool ``[B, 1, 1, L]``, True where a key may be attended to."""
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(batch, length, d_model))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + FFN(LN(x))`` with a GELU FFN."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), attn_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, pre-norm blocks, final LayerNorm, masked mean pooling.

    Padding never reaches a real token: pad keys are masked out of attention and pad positions
    out of the mean, so a text's features do not depend on how much padding its batch has.

    Args:
        vocab_size: number of token ids.
        max_length: longest token sequence (size of the position table).
        pad_id: token id that marks padding.
        d_model: width of the residual stream; divisible by ``num_heads``.
        num_layers: number of blocks.
        num_heads: attention heads per block.
        ffn_dim: hidden width of the feed-forward layer.
        dropout: dropout on embeddings, attention weights and residual branches.
        gradient_checkpointing: recompute each block's activations in the backward pass
            (less memory, about one extra forward of time); only in training mode.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        pad_id: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.gradient_checkpointing = gradient_checkpointing
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_length, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out_features = d_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != self.pad_id  # [B, L]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        # A row of only padding has no key to attend to. torch < 2.5 returns NaN there, whose
        # gradient poisons the whole batch even though pooling drops the row; let such rows attend
        # to every key instead (their pooled features are zero either way).
        attn_mask = (mask | ~mask.any(dim=1, keepdim=True))[:, None, None, :]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        x = self.norm(x)
        weights = mask.unsqueeze(-1).to(x.dtype)
        # clamp: an all-padding row pools to zeros instead of 0/0.
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class Transformer(nn.Module):
    """Transformer encoder over the text, one output head per target.

    Args:
        inputs: shapes of the batch tensors; needs text.
        heads: target name -> output size (classes, or 1 for regression).
        d_model, num_layers, num_heads, ffn_dim, dropout, gradient_checkpointing: see
            ``TransformerEncoder``.

    Raises:
        UserError: the data has no text column, or ``d_model`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        inputs: InputSpec,
        heads: dict[str, int],
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not inputs.has_text:
            raise UserError(
                "model=transformer needs a text column (data.text_columns) but the data has none; "
                "choose model=mlp for numeric and categorical data."
            )
        for key, value in (("d_model", d_model), ("num_layers", num_layers), ("num_heads", num_heads), ("ffn_dim", ffn_dim)):
            positive_ints(f"model.{key}", value)
        dropout_rate("model.dropout", dropout)
        check_heads_divide(d_model, num_heads, "model.d_model", "model.num_heads")
        self.encoder = TransformerEncoder(
            inputs.vocab_size,
            inputs.max_length,
            inputs.pad_id,
            d_model,
            num_layers,
            num_heads,
            ffn_dim,
            dropout,
            gradient_checkpointing,
        )
        self.heads = OutputHeads(d_model, heads)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.heads(self.encoder(batch["tokens"]))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward and backward) for MFU, as PaLM's appendix counts them:
        6 x the non-embedding parameters (the matmuls), plus 12 x layers x width x sequence (attention)."""
        embedding = (
            self.encoder.token_embedding.weight.numel() + self.encoder.position_embedding.weight.numel()
        )
        non_embedding = sum(p.numel() for p in self.parameters()) - embedding
        layers, width = len(self.encoder.blocks), self.encoder.out_features
        return 6 * non_embedding + 12 * layers * width * seq_len


def check_heads_divide(d_model: int, num_heads: int, d_model_key: str, num_heads_key: str) -> None:
    """Raises a UserError naming both config keys unless ``num_heads`` divides ``d_model``."""
    if num_heads < 1 or d_model % num_heads:
        raise UserError(
            f"{d_model_key}={d_model} must be divisible by {num_heads_key}={num_heads}; "
            f"pick e.g. {num_heads_key}={max(h for h in (1, 2, 4, 8) if d_model % h == 0)}."
        )
