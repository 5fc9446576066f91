import pytest
import torch
from model_inputs import HEADS, SPEC, make_tabular, multitask_loss

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError
from seo_cli.models.mlp import MLP


def test_output_shapes():
    out = MLP(inputs=SPEC, heads=HEADS)(make_tabular(SPEC))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"intent": (6, 4), "quality": (6, 2), "ctr": (6,)}


def test_backward_gives_finite_nonzero_grads_to_every_parameter():
    model = MLP(inputs=SPEC, heads=HEADS)
    multitask_loss(model(make_tabular(SPEC)), 6).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_parameter_count():
    # embeddings (4 + 2) * 8; 3 + 2 * 8 = 19 features -> 256 -> 128 -> 4 + 2 + 1 outputs
    expected = (4 + 2) * 8 + (19 * 256 + 256) + (256 * 128 + 128) + (128 * 7 + 7)
    assert expected == 38967
    assert sum(p.numel() for p in MLP(inputs=SPEC, heads=HEADS).parameters()) == expected


def test_seeded_outputs_are_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = MLP(inputs=SPEC, heads=HEADS, dropout=0.5)
        outs.append(model(make_tabular(SPEC)))  # train mode: dropout masks come from the seed too
    for name in HEADS:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=0, atol=0)


def test_categorical_only_data_uses_the_embeddings():
    spec = InputSpec(categorical_cardinalities=[4, 2])
    model = MLP(inputs=spec, heads=HEADS).eval()
    batch = make_tabular(spec)
    assert "numeric" not in batch
    out = model(batch)
    assert out["intent"].shape == (6, 4)
    other = {"categorical": batch["categorical"].flip(0)}
    assert not torch.allclose(model(other)["intent"], out["intent"])


def test_numeric_only_data():
    spec = InputSpec(num_numeric=3)
    out = MLP(inputs=spec, heads=HEADS)(make_tabular(spec))
    assert out["ctr"].shape == (6,)


@pytest.mark.parametrize(
    ("activation", "module"),
    [("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU), ("silu", torch.nn.SiLU), ("tanh", torch.nn.Tanh)],
)
def test_activation_is_chosen_by_name(activation, module):
    model = MLP(inputs=SPEC, heads=HEADS, hidden_sizes=[8, 8], activation=activation)
    assert sum(isinstance(m, module) for m in model.modules()) == 2


def test_hidden_sizes_set_the_layers():
    model = MLP(inputs=SPEC, heads=HEADS, hidden_sizes=[32, 16, 8])
    widths = [m.out_features for m in model.body if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 8]
    assert model.heads.layers[model.heads.names.index("intent")].in_features == 8


def test_unknown_activation_names_the_key_and_the_choices():
    with pytest.raises(UserError, match=r"model\.activation='swish'.*relu, gelu, silu, tanh"):
        MLP(inputs=SPEC, heads=HEADS, activation="swish")


def test_text_only_data_is_refused_with_the_fix():
    with pytest.raises(UserError) as excinfo:
        MLP(inputs=InputSpec(vocab_size=20, max_length=16), heads=HEADS)
    message = str(excinfo.value)
    assert "data.numeric_columns" in message and "data.categorical_columns" in message
    assert "model=textcnn" in message and "model=transformer" in message
