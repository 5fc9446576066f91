"""Every model's forward and backward trace into one graph: no host syncs or data-dependent branches."""

import pytest
import torch
from model_inputs import HEADS, SPEC

from seo_cli.models.mlp import MLP
from seo_cli.models.seo_multitask import SEOMultitask
from seo_cli.models.textcnn import TextCNN
from seo_cli.models.transformer import Transformer


@pytest.mark.parametrize(
    ("model_cls", "knobs"),
    [
        (MLP, {}),
        (TextCNN, {}),
        (Transformer, {"d_model": 16, "ffn_dim": 32, "gradient_checkpointing": True}),
        (SEOMultitask, {}),
        (SEOMultitask, {"text_encoder": "transformer", "embedding_dim": 16}),
    ],
    ids=["mlp", "textcnn", "transformer", "seo_multitask", "seo_multitask_transformer"],
)
def test_forward_compiles_without_graph_breaks(model_cls, knobs):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = model_cls(inputs=SPEC, heads=HEADS, dropout=0.0, **knobs)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 20, (4, 10), generator=g)
    tokens[1, 6:] = SPEC.pad_id
    batch = {
        "numeric": torch.randn(4, 3, generator=g),
        "categorical": torch.tensor([[0, 1]] * 4),
        "tokens": tokens,
    }
    # backend="eager" checks graph capture (fullgraph=True fails on any break) without the
    # seconds of C++ code generation inductor would add.
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out, expected = compiled(batch), model(batch)
    sum(v.sum() for v in out.values()).backward()
    for name in HEADS:
        torch.testing.assert_close(out[name], expected[name])
