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


def test_the_stacked_product_equals_each_head_on_its_own_and_grads_reach_each_layer():
    torch.manual_seed(0)
    heads = OutputHeads(6, {"intent": 4, "quality": 2, "ctr": 1, "position": 1})
    features = torch.randn(5, 6, dtype=torch.float64)
    heads = heads.double()
    out = heads(features)
    for name, layer in zip(heads.names, heads.layers, strict=True):
        alone = layer(features)
        torch.testing.assert_close(out[name], alone.squeeze(-1) if layer.out_features == 1 else alone, rtol=0, atol=1e-12)
    sum(o.sum() * (i + 1) for i, o in enumerate(out.values())).backward()
    for i, layer in enumerate(heads.layers):
        # d/dW of (i + 1) * sum(features @ W.T + b): every row of W gets (i + 1) * the column sums of features.
        expected = (i + 1) * features.sum(0).expand(layer.out_features, -1)
        torch.testing.assert_close(layer.weight.grad, expected)
        torch.testing.assert_close(layer.bias.grad, torch.full((layer.out_features,), 5.0 * (i + 1), dtype=torch.float64))
        assert layer.weight.grad.is_contiguous() and layer.weight.grad.shape == layer.weight.shape
