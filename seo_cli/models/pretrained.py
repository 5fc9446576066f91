"""A pretrained Hugging Face text encoder (BERT family and the like): on its own with one head per target
(``PretrainedText``, ``model=pretrained``), or as the text tower of ``seo_multitask``."""

from typing import Any

import torch
from torch import Tensor, nn

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError, dropout_rate
from seo_cli.models.heads import OutputHeads

POOLING = ("mean", "cls")
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class PretrainedEncoder(nn.Module):
    """Token ids ``[B, L]`` to pooled features ``[B, hidden]``: the encoder's states, masked mean or first token.

    The encoder is built from ``inputs.encoder_config`` (plain data the preprocessing read from
    ``name_or_path`` at training time, or from the checkpoint later); its trained weights come from
    ``load_pretrained`` at the start of a training run, and from the checkpoint afterwards, so building
    it never reads a file.

    Raises:
        UserError: no text or no encoder config, or a knob out of range.
    """

    def __init__(
        self, inputs: InputSpec, name_or_path: str, pooling: str, freeze: str | int, gradient_checkpointing: bool
    ) -> None:
        super().__init__()
        from seo_cli.pretrained import build_encoder

        if pooling not in POOLING:
            raise UserError(f"model.pooling={pooling!r} is not known; choose one of {', '.join(POOLING)}.")
        if not inputs.has_text or inputs.encoder_config is None:
            raise UserError(
                "a pretrained encoder reads text through its own tokenizer, but the data has "
                + ("no text columns; map data.text_columns." if not inputs.has_text else "none; set model.name_or_path.")
            )
        self.name_or_path, self.pooling, self.pad_id = name_or_path, pooling, inputs.pad_id
        self.model = build_encoder(inputs.encoder_config)
        layers = _layers(self.model)
        frozen_layers = _frozen(freeze, len(layers))
        if freeze != "none":  # the embeddings, then the first layers
            embeddings = getattr(self.model, "embeddings", None) or self.model.get_input_embeddings()
            for module in [embeddings, *layers[:frozen_layers]]:
                module.requires_grad_(False)
        self.freeze_all = freeze == "all"
        if self.freeze_all:
            self.model.requires_grad_(False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.out_features = self.model.config.hidden_size

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        super().train(mode)
        if self.freeze_all:  # a frozen encoder is a fixed feature extractor: no dropout inside it
            self.model.eval()
        return self

    def forward(self, tokens: Tensor) -> Tensor:
        mask = tokens != self.pad_id
        states = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    @torch.no_grad()
    def features_of(self, tokens: Tensor, batch_size: int, device: torch.device) -> Tensor:
        """Pooled features of every row of ``tokens`` (on the host), computed once: under ``freeze=all``
        the heads then train on these and the encoder never runs again in training."""
        was_training, parts = self.training, []
        batch_size = max(1, min(batch_size, 2**16 // max(tokens.shape[1], 1)))  # 64K tokens: activations stay small
        self.eval()
        trailing = (tokens != self.pad_id).int().flip(1).argmax(1)  # trailing padding of each row
        for start in range(0, len(tokens), batch_size):
            chunk = tokens[start : start + batch_size]
            cut = tokens.shape[1] - int(trailing[start : start + batch_size].min())
            parts.append(self(chunk[:, : max(cut, 1)].to(device)).float())
        self.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, self.out_features, device=device)

    def load_pretrained(self) -> None:
        """The encoder's trained weights from ``name_or_path`` (a fresh training run calls this once)."""
        from seo_cli.pretrained import pretrained_weights

        missing, unexpected = self.model.load_state_dict(pretrained_weights(self.name_or_path), strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise UserError(
                f"model.name_or_path={self.name_or_path}: its weights do not fit its own config "
                f"({len(missing)} missing, {len(unexpected)} unexpected); use an unmodified model directory."
            )


class PretrainedText(nn.Module):
    """The pooled features of a pretrained encoder, through dropout into one head per target.

    Args:
        inputs: shapes of the batch tensors, with the encoder's config (``data.tokenizer`` set).
        heads: target name -> output size.
        name_or_path: where ``load_pretrained`` reads the weights from.
        pooling: mean (over real tokens) | cls (the first token's state).
        freeze: none | embeddings | all | a number k: the embeddings and the first k layers.
        encoder_lr: the encoder's learning rate (null: the optimizer's); the heads keep the optimizer's.
        dropout: on the pooled features.
        gradient_checkpointing: recompute the encoder's activations in backward.

    Raises:
        UserError: no text or no encoder config, or a knob out of range.
    """

    def __init__(
        self,
        inputs: InputSpec,
        heads: dict[str, int],
        name_or_path: str = "",
        pooling: str = "mean",
        freeze: str | int = "none",
        encoder_lr: float | None = None,
        dropout: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        dropout_rate("model.dropout", dropout)
        check_encoder_lr(encoder_lr)
        self.encoder_lr = encoder_lr
        self.encoder = PretrainedEncoder(inputs, name_or_path, pooling, freeze, gradient_checkpointing)
        self.dropout = nn.Dropout(dropout)
        self.heads = OutputHeads(self.encoder.out_features, heads)

    @property
    def freeze_all(self) -> bool:
        return self.encoder.freeze_all

    def load_pretrained(self) -> None:
        self.encoder.load_pretrained()

    def features_of(self, tokens: Tensor, batch_size: int, device: torch.device) -> Tensor:
        return self.encoder.features_of(tokens, batch_size, device)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        # Rows whose pooled features were computed once (a frozen encoder, seo_cli.train) skip the encoder.
        features = inputs["features"] if "features" in inputs else self.encoder(inputs["tokens"])
        return self.heads(self.dropout(features))

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return parameter_groups(self, "encoder.", self.encoder_lr, weight_decay)


def parameter_groups(model: nn.Module, encoder_prefix: str, encoder_lr: float | None, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: no weight decay on biases and LayerNorm weights; the encoder at ``encoder_lr``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith(encoder_prefix), not name.endswith(NO_DECAY))
            groups.setdefault(key, []).append(param)
    result = []
    for (in_encoder, decays), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if in_encoder and encoder_lr is not None:
            group["lr"] = encoder_lr
        result.append(group)
    return result


def check_encoder_lr(encoder_lr: float | None) -> None:
    if encoder_lr is not None and not encoder_lr > 0:
        raise UserError(f"model.encoder_lr={encoder_lr} must be above 0, or null (the optimizer's rate).")


def _layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's blocks, in order (``encoder.layer`` in BERT-family models)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        module: Any = encoder
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return list(module)
    return []


def _frozen(freeze: Any, layers: int) -> int:
    """How many of the first layers ``model.freeze`` freezes (with the embeddings, unless none).

    Raises:
        UserError: an unknown value, or more layers than the encoder has.
    """
    if freeze in ("none", "embeddings"):
        return 0
    if freeze == "all":
        return layers
    if type(freeze) is int and 0 <= freeze <= layers:
        return freeze
    raise UserError(
        f"model.freeze={freeze!r} is not known; use none, embeddings, all, or a number of layers from 0 to {layers}."
    )
