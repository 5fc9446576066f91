import torch

from seo_cli.models.heads import OutputHeads


def test_classification_heads_keep_class_dim_and_regression_heads_are_squeezed():
    heads = OutputHeads(6, {"intent": 4, "quality": 2, "ctr": 1})
    out = heads(torch.randn(5, 6))
    assert {name: tuple(t.shape) for name, t in out.items()} == {
        "intent": (5, 4),
        "quality": (5, 2),
        "ctr": (5,),
    }


def test_each_head_is_its_own_linear_layer():
    heads = OutputHeads(6, {"intent": 4, "ctr": 1})
    features = torch.randn(5, 6)
    out = heads(features)
    layer = heads.heads["ctr"]
    torch.testing.assert_close(out["ctr"], features @ layer.weight[0] + layer.bias[0])
    assert sum(p.numel() for p in heads.parameters()) == (6 * 4 + 4) + (6 * 1 + 1)
