"""Inputs shared by the model tests: a small InputSpec, heads of each kind, batches and a loss over them."""

import torch
import torch.nn.functional as F

from seo_cli.data.spec import InputSpec

SPEC = InputSpec(num_numeric=3, categorical_cardinalities=[4, 2], vocab_size=20, max_length=16, pad_id=0)
HEADS = {"intent": 4, "quality": 2, "ctr": 1}
LENGTHS = [10, 7, 3, 1, 10, 5]


def make_tokens(
    lengths: list[int], max_len: int, vocab_size: int, pad_id: int, seed: int = 0
) -> torch.Tensor:
    """Random non-pad tokens, each row padded after its length with ``pad_id``."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size - 1, (len(lengths), max_len), generator=g)
    tokens = tokens + (tokens >= pad_id).long()  # skip the pad id
    padded = torch.arange(max_len)[None, :] >= torch.tensor(lengths)[:, None]
    return tokens.masked_fill(padded, pad_id)


def make_tabular(spec: InputSpec, batch_size: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    if spec.num_numeric:
        batch["numeric"] = torch.randn(batch_size, spec.num_numeric, generator=g)
    if spec.categorical_cardinalities:
        # Codes 0 (unknown) .. cardinality - 1, both ends included.
        batch["categorical"] = torch.stack(
            [torch.arange(batch_size) % c for c in spec.categorical_cardinalities], dim=1
        )
    return batch


def multitask_loss(out: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    return (
        F.cross_entropy(out["intent"], torch.arange(batch_size) % 4)
        + F.cross_entropy(out["quality"], torch.arange(batch_size) % 2)
        + F.mse_loss(out["ctr"], torch.linspace(0, 1, batch_size))
    )
