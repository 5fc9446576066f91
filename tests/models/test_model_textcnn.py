import pytest
import torch
import torch.nn.functional as F
from model_inputs import HEADS, LENGTHS, SPEC, make_tokens, multitask_loss

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError
from seo_cli.models.textcnn import TextCNN


def test_output_shapes():
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    out = TextCNN(inputs=SPEC, heads=HEADS)(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"intent": (6, 4), "quality": (6, 2), "ctr": (6,)}


def test_backward_gives_finite_grads_and_none_to_the_pad_embedding():
    model = TextCNN(inputs=SPEC, heads=HEADS)
    multitask_loss(model({"tokens": make_tokens(LENGTHS, 10, 20, 0)}), 6).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert (model.encoder.embedding.weight.grad[SPEC.pad_id] == 0).all()


def test_parameter_count():
    # embedding 20*64; Conv1d(64 -> 64, k) for k = 3, 4, 5; 3*64 features -> 4 + 2 + 1 outputs
    expected = 20 * 64 + sum(64 * 64 * k + 64 for k in (3, 4, 5)) + (192 * 7 + 7)
    assert expected == 51975
    assert sum(p.numel() for p in TextCNN(inputs=SPEC, heads=HEADS).parameters()) == expected


def test_seeded_outputs_are_deterministic():
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(TextCNN(inputs=SPEC, heads=HEADS, dropout=0.5)(batch))
    for name in HEADS:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=0, atol=0)


@pytest.mark.parametrize("pad_id", [0, 5])
def test_trailing_padding_does_not_change_the_output(pad_id):
    spec = InputSpec(vocab_size=20, max_length=16, pad_id=pad_id)
    torch.manual_seed(0)
    model = TextCNN(inputs=spec, heads=HEADS).eval()
    short = make_tokens(LENGTHS, 10, 20, pad_id)
    long = F.pad(short, (0, 6), value=pad_id)
    out_short, out_long = model({"tokens": short}), model({"tokens": long})
    for name in HEADS:
        torch.testing.assert_close(out_short[name], out_long[name])


def test_the_pad_embedding_row_is_ignored():
    torch.manual_seed(0)
    model = TextCNN(inputs=SPEC, heads=HEADS).eval()
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    before = model(batch)
    # padding_idx only zero-initialises the row; loaded or decayed weights may not keep it zero.
    with torch.no_grad():
        model.encoder.embedding.weight[SPEC.pad_id] = 10 * torch.randn(64)
    after = model(batch)
    for name in HEADS:
        torch.testing.assert_close(before[name], after[name])


def test_texts_shorter_than_the_widest_kernel():
    torch.manual_seed(0)
    model = TextCNN(inputs=SPEC, heads=HEADS, kernel_sizes=[3, 4, 5]).eval()
    tokens = make_tokens([2, 1], 2, 20, 0)
    features = model.encoder(tokens)
    assert (features > 0).any(dim=1).all()  # every text gets features from every window width
    torch.testing.assert_close(features, model.encoder(F.pad(tokens, (0, 14))))


def test_a_text_with_no_tokens_gets_zero_features_and_finite_grads():
    model = TextCNN(inputs=SPEC, heads=HEADS)
    tokens = make_tokens([0, 4], 8, 20, 0)
    features = model.encoder(tokens)
    assert (features[0] == 0).all()
    features.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def test_text_free_data_is_refused_with_the_fix():
    with pytest.raises(UserError, match=r"data\.text_columns.*model=mlp"):
        TextCNN(inputs=InputSpec(num_numeric=3), heads=HEADS)


def test_empty_kernel_sizes_names_the_key():
    with pytest.raises(UserError, match=r"model\.kernel_sizes"):
        TextCNN(inputs=SPEC, heads=HEADS, kernel_sizes=[])
