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
    layer = heads.layers[heads.names.index("ctr")]
    torch.testing.assert_close(out["ctr"], features @ layer.weight[0] + layer.bias[0])
    assert sum(p.numel() for p in heads.parameters()) == (6 * 4 + 4) + (6 * 1 + 1)


def test_target_names_may_clash_with_module_attributes_or_hold_dots():
    import torch

    from seo_cli.data.spec import Target
    from seo_cli.losses import MultiTargetLoss

    heads = OutputHeads(4, {"type": 3, "click.rate": 1})
    out = heads(torch.zeros(2, 4))
    assert out["type"].shape == (2, 3) and out["click.rate"].shape == (2,)
    loss = MultiTargetLoss(
        [Target("page.type", "classification")], {"page.type": [1, 3]}, class_weights="balanced"
    )
    torch.testing.assert_close(loss.class_weight("page.type"), torch.tensor([2.0, 2.0 / 3.0]))
