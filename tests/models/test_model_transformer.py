import pytest
import torch
import torch.nn.functional as F
from model_inputs import HEADS, LENGTHS, SPEC, make_tokens, multitask_loss

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError
from seo_cli.models.transformer import Transformer

SMALL = {"d_model": 16, "num_layers": 2, "num_heads": 4, "ffn_dim": 32}


def test_output_shapes():
    out = Transformer(inputs=SPEC, heads=HEADS)({"tokens": make_tokens(LENGTHS, 10, 20, 0)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {"intent": (6, 4), "quality": (6, 2), "ctr": (6,)}


def test_backward_gives_finite_grads_and_none_to_the_pad_embedding():
    model = Transformer(inputs=SPEC, heads=HEADS)
    multitask_loss(model({"tokens": make_tokens(LENGTHS, 10, 20, 0)}), 6).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        if name != "encoder.position_embedding.weight":
            assert param.grad.abs().sum() > 0, name
    # Positions past the longest text (10 of 16) are never seen; the pad row never learns.
    assert (model.encoder.position_embedding.weight.grad[10:] == 0).all()
    assert (model.encoder.token_embedding.weight.grad[SPEC.pad_id] == 0).all()


def test_parameter_count():
    d, ffn = 128, 256
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * ffn + ffn) + (ffn * d + d)
    # token and position embeddings, 2 blocks, final LayerNorm, 4 + 2 + 1 outputs
    expected = 20 * d + 16 * d + 2 * block + 2 * d + (d * 7 + 7)
    assert expected == 270727
    assert sum(p.numel() for p in Transformer(inputs=SPEC, heads=HEADS).parameters()) == expected


def test_seeded_outputs_are_deterministic():
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(Transformer(inputs=SPEC, heads=HEADS, dropout=0.3, **SMALL)(batch))
    for name in HEADS:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=0, atol=0)


@pytest.mark.parametrize("pad_id", [0, 5])
def test_trailing_padding_does_not_change_the_output(pad_id):
    spec = InputSpec(vocab_size=20, max_length=16, pad_id=pad_id)
    torch.manual_seed(0)
    model = Transformer(inputs=spec, heads=HEADS, **SMALL).eval()
    short = make_tokens(LENGTHS, 10, 20, pad_id)
    out_short = model({"tokens": short})
    out_long = model({"tokens": F.pad(short, (0, 6), value=pad_id)})
    for name in HEADS:
        torch.testing.assert_close(out_short[name], out_long[name])


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    model = Transformer(inputs=SPEC, heads=HEADS, **SMALL).eval()
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    before = model(batch)
    # Give the pad positions a large embedding: only attention and pooling masks keep it out.
    with torch.no_grad():
        model.encoder.token_embedding.weight[SPEC.pad_id] = 10 * torch.randn(16)
    after = model(batch)
    for name in HEADS:
        torch.testing.assert_close(before[name], after[name])


def test_a_text_with_no_tokens_gives_finite_outputs_and_grads():
    model = Transformer(inputs=SPEC, heads=HEADS, **SMALL)
    tokens = make_tokens([0, 4], 8, 20, 0)
    features = model.encoder(tokens)
    assert torch.isfinite(features).all()
    assert (features[0] == 0).all()
    features.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def count_block_calls(model: Transformer) -> list[int]:
    calls = [0]
    for block in model.encoder.blocks:
        # A pre-hook: the non-reentrant recomputation stops as soon as it has what backward needs,
        # before a block's forward returns, so forward (post) hooks do not see it.
        block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    batch = {"tokens": make_tokens(LENGTHS, 10, 20, 0)}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = Transformer(
            inputs=SPEC, heads=HEADS, dropout=0.0, gradient_checkpointing=checkpointing, **SMALL
        )
        model.train()
        calls = count_block_calls(model)
        loss = multitask_loss(model(batch), 6)
        loss.backward()
        # Each block runs again in the backward pass when (and only when) it is checkpointed.
        assert calls[0] == (4 if checkpointing else 2)
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain)
    torch.testing.assert_close(grads_ckpt, grads_plain)


def test_gradient_checkpointing_is_off_in_eval_mode():
    model = Transformer(inputs=SPEC, heads=HEADS, gradient_checkpointing=True, **SMALL).eval()
    calls = count_block_calls(model)
    model({"tokens": make_tokens(LENGTHS, 10, 20, 0)})["ctr"].sum().backward()
    assert calls[0] == 2


def test_text_free_data_is_refused_with_the_fix():
    with pytest.raises(UserError, match=r"data\.text_columns.*model=mlp"):
        Transformer(inputs=InputSpec(num_numeric=3), heads=HEADS)


def test_heads_must_divide_d_model():
    with pytest.raises(UserError, match=r"model\.d_model=130 must be divisible by model\.num_heads=4"):
        Transformer(inputs=SPEC, heads=HEADS, d_model=130, num_heads=4)
