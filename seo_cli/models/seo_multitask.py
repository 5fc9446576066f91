"""The default SEO model: a text encoder and a tabular tower fused into one shared trunk."""

from collections.abc import Sequence

import torch
from torch import nn

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError, dropout_rate, positive_ints
from seo_cli.models.heads import OutputHeads
from seo_cli.models.mlp import TabularEncoder, build_mlp
from seo_cli.models.pretrained import PretrainedEncoder, check_encoder_lr, parameter_groups
from seo_cli.models.textcnn import TextCNNEncoder
from seo_cli.models.transformer import TransformerEncoder, check_heads_divide

TEXT_ENCODERS = ("cnn", "transformer", "pretrained")


class SEOMultitask(nn.Module):
    """Text features and tabular features, concatenated, through a shared MLP into one head per target.

    Uses whichever inputs the data has: text only, tabular only, or both.

    Args:
        inputs: shapes of the batch tensors.
        heads: target name -> output size (classes, or 1 for regression).
        text_encoder: cnn (TextCNN, fast on CPU) | transformer | pretrained (a Hugging Face encoder
            read from ``name_or_path``, through its own tokenizer: see ``seo_cli.models.pretrained``).
        embedding_dim: token embedding size; the transformer's d_model.
        num_filters: cnn channels per kernel size.
        kernel_sizes: cnn window widths in tokens.
        transformer_layers: transformer blocks.
        transformer_heads: attention heads; must divide ``embedding_dim``.
        transformer_ffn_dim: hidden width of the transformer's feed-forward layers.
        categorical_embedding_dim: embedding size of each categorical column.
        tabular_hidden: widths of the tabular tower.
        fusion_hidden: widths of the shared trunk after concatenation.
        dropout: dropout in every tower and on the text features.
        activation: relu | gelu | silu | tanh, in the tabular tower and the shared trunk.
        name_or_path, pooling, freeze, encoder_lr, gradient_checkpointing: text_encoder=pretrained's
            (as ``model=pretrained``'s knobs).

    Raises:
        UserError: the data has neither text nor tabular columns, or a knob is invalid.
    """

    def __init__(
        self,
        inputs: InputSpec,
        heads: dict[str, int],
        text_encoder: str = "cnn",
        embedding_dim: int = 48,
        num_filters: int = 48,
        kernel_sizes: Sequence[int] = (2, 3, 4),
        transformer_layers: int = 1,
        transformer_heads: int = 4,
        transformer_ffn_dim: int = 96,
        categorical_embedding_dim: int = 8,
        tabular_hidden: Sequence[int] = (64,),
        fusion_hidden: Sequence[int] = (128,),
        dropout: float = 0.1,
        activation: str = "relu",
        name_or_path: str | None = None,
        pooling: str = "mean",
        freeze: str | int = "none",
        encoder_lr: float | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        sizes = {
            "embedding_dim": embedding_dim, "num_filters": num_filters, "kernel_sizes": list(kernel_sizes),
            "transformer_layers": transformer_layers, "transformer_heads": transformer_heads,
            "transformer_ffn_dim": transformer_ffn_dim, "categorical_embedding_dim": categorical_embedding_dim,
            "tabular_hidden": list(tabular_hidden), "fusion_hidden": list(fusion_hidden),
        }  # fmt: skip
        for key, value in sizes.items():
            positive_ints(f"model.{key}", value)
        dropout_rate("model.dropout", dropout)
        if not inputs.has_text and not inputs.has_tabular:
            raise UserError(
                "model=seo_multitask needs text (data.text_columns) or numeric/categorical columns "
                "(data.numeric_columns, data.categorical_columns) but the data has none; map at least one."
            )
        if text_encoder not in TEXT_ENCODERS:
            raise UserError(
                f"model.text_encoder={text_encoder!r} is not known; choose one of {', '.join(TEXT_ENCODERS)}."
            )
        features = 0
        self.text: nn.Module | None = None
        if inputs.has_text:
            if text_encoder == "pretrained":
                check_encoder_lr(encoder_lr)
                self.text = PretrainedEncoder(inputs, name_or_path or "", pooling, freeze, gradient_checkpointing)
            elif text_encoder == "cnn":
                if not kernel_sizes:
                    raise UserError(
                        "model.kernel_sizes is empty; give at least one window width, e.g. [2,3,4]."
                    )
                self.text = TextCNNEncoder(
                    inputs.vocab_size, inputs.pad_id, embedding_dim, num_filters, kernel_sizes
                )
            else:
                check_heads_divide(
                    embedding_dim, transformer_heads, "model.embedding_dim", "model.transformer_heads"
                )
                self.text = TransformerEncoder(
                    inputs.vocab_size,
                    inputs.max_length,
                    inputs.pad_id,
                    d_model=embedding_dim,
                    num_layers=transformer_layers,
                    num_heads=transformer_heads,
                    ffn_dim=transformer_ffn_dim,
                    dropout=dropout,
                )
            self.text_dropout = nn.Dropout(dropout)
            features += self.text.out_features
        self.tabular: nn.Module | None = None
        if inputs.has_tabular:
            encoder = TabularEncoder(
                inputs.num_numeric, inputs.categorical_cardinalities, categorical_embedding_dim
            )
            self.tabular = nn.Sequential(
                encoder,
                build_mlp(encoder.out_features, tabular_hidden, activation, dropout, "model.activation"),
            )
            features += tabular_hidden[-1] if tabular_hidden else encoder.out_features
        self.fusion = build_mlp(features, fusion_hidden, activation, dropout, "model.activation")
        self.heads = OutputHeads(fusion_hidden[-1] if fusion_hidden else features, heads)
        self.encoder_lr = encoder_lr

    @property
    def freeze_all(self) -> bool:
        return isinstance(self.text, PretrainedEncoder) and self.text.freeze_all

    def load_pretrained(self) -> None:
        if isinstance(self.text, PretrainedEncoder):
            self.text.load_pretrained()

    def features_of(self, tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
        return self.text.features_of(tokens, batch_size, device)

    def parameter_groups(self, weight_decay: float) -> list[dict] | None:
        """A pretrained text encoder's groups (its learning rate, no decay on biases and norms); None otherwise."""
        if not isinstance(self.text, PretrainedEncoder):
            return None
        return parameter_groups(self, "text.", self.encoder_lr, weight_decay)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = []
        if self.text is not None:
            # A frozen pretrained encoder's features are computed once (seo_cli.train) and come as "features".
            text = batch["features"] if "features" in batch else self.text(batch["tokens"])
            parts.append(self.text_dropout(text))
        if self.tabular is not None:
            parts.append(self.tabular(batch))
        return self.heads(self.fusion(torch.cat(parts, dim=1)))
