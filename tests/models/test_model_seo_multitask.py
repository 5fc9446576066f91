import pytest
import torch
import torch.nn.functional as F
from model_inputs import HEADS, LENGTHS, SPEC, multitask_loss

from seo_cli.data.spec import InputSpec
from seo_cli.errors import UserError
from seo_cli.models.seo_multitask import SEOMultitask

TEXT_ONLY = InputSpec(vocab_size=20, max_length=16, pad_id=0)
TABULAR_ONLY = InputSpec(num_numeric=3, categorical_cardinalities=[4, 2])
SMALL_TRANSFORMER = {"text_encoder": "transformer", "embedding_dim": 16, "transformer_ffn_dim": 32}


def make_batch(spec: InputSpec, lengths: list[int] = LENGTHS, max_len: int = 10, seed: int = 0):
    """A batch with the keys ``spec`` promises and no others; tokens padded after each length."""
    g = torch.Generator().manual_seed(seed)
    batch_size = len(lengths)
    batch = {}
    if spec.num_numeric:
        batch["numeric"] = torch.randn(batch_size, spec.num_numeric, generator=g)
    if spec.categorical_cardinalities:
        batch["categorical"] = torch.stack(
            [torch.arange(batch_size) % c for c in spec.categorical_cardinalities], dim=1
        )
    if spec.has_text:
        tokens = torch.randint(1, spec.vocab_size, (batch_size, max_len), generator=g)
        padded = torch.arange(max_len)[None, :] >= torch.tensor(lengths)[:, None]
        batch["tokens"] = tokens.masked_fill(padded, spec.pad_id)
    return batch


@pytest.mark.parametrize("spec", [SPEC, TEXT_ONLY, TABULAR_ONLY], ids=["both", "text_only", "tabular_only"])
@pytest.mark.parametrize("knobs", [{}, SMALL_TRANSFORMER], ids=["cnn", "transformer"])
def test_output_shapes_and_finite_grads(spec, knobs):
    model = SEOMultitask(inputs=spec, heads=HEADS, **knobs)
    out = model(make_batch(spec))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"intent": (6, 4), "quality": (6, 2), "ctr": (6,)}
    multitask_loss(out, 6).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert (model.text is None) == (not spec.has_text)
    assert (model.tabular is None) == (not spec.has_tabular)


def test_with_both_inputs_the_output_depends_on_text_and_tabular():
    torch.manual_seed(0)
    model = SEOMultitask(inputs=SPEC, heads=HEADS).eval()
    batch = make_batch(SPEC)
    out = model(batch)["intent"]
    other_text = {**batch, "tokens": make_batch(SPEC, seed=1)["tokens"]}
    other_numeric = {**batch, "numeric": batch["numeric"] + 1.0}
    assert not torch.allclose(model(other_text)["intent"], out)
    assert not torch.allclose(model(other_numeric)["intent"], out)


def test_parameter_count():
    text = 20 * 48 + sum(48 * 48 * k + 48 for k in (2, 3, 4))  # embedding + Conv1d(48 -> 48, k)
    tabular = (4 + 2) * 8 + (3 + 16) * 64 + 64  # embeddings + Linear(19 -> 64)
    fusion = (3 * 48 + 64) * 128 + 128
    expected = text + tabular + fusion + (128 * 7 + 7)
    assert expected == 50823
    assert sum(p.numel() for p in SEOMultitask(inputs=SPEC, heads=HEADS).parameters()) == expected


def test_transformer_text_encoder_parameter_count():
    model = SEOMultitask(inputs=SPEC, heads=HEADS, text_encoder="transformer")
    assert type(model.text).__name__ == "TransformerEncoder"
    assert sum(p.numel() for p in model.parameters()) == 37479


@pytest.mark.parametrize("knobs", [{}, SMALL_TRANSFORMER], ids=["cnn", "transformer"])
def test_seeded_outputs_are_deterministic(knobs):
    batch = make_batch(SPEC)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(SEOMultitask(inputs=SPEC, heads=HEADS, dropout=0.3, **knobs)(batch))
    for name in HEADS:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=0, atol=0)


@pytest.mark.parametrize("knobs", [{}, SMALL_TRANSFORMER], ids=["cnn", "transformer"])
def test_trailing_padding_does_not_change_the_output(knobs):
    torch.manual_seed(0)
    model = SEOMultitask(inputs=SPEC, heads=HEADS, **knobs).eval()
    batch = make_batch(SPEC)
    out_short = model(batch)
    out_long = model({**batch, "tokens": F.pad(batch["tokens"], (0, 6), value=SPEC.pad_id)})
    for name in HEADS:
        torch.testing.assert_close(out_short[name], out_long[name])


def test_no_inputs_at_all_is_refused():
    with pytest.raises(UserError, match=r"data\.text_columns.*data\.numeric_columns"):
        SEOMultitask(inputs=InputSpec(), heads=HEADS)


def test_unknown_text_encoder_names_the_key():
    with pytest.raises(UserError, match=r"model\.text_encoder='lstm'.*cnn, transformer"):
        SEOMultitask(inputs=SPEC, heads=HEADS, text_encoder="lstm")


def test_transformer_heads_must_divide_the_embedding_dim():
    with pytest.raises(UserError, match=r"model\.embedding_dim=50 .*model\.transformer_heads=4"):
        SEOMultitask(inputs=SPEC, heads=HEADS, text_encoder="transformer", embedding_dim=50)


def test_unknown_activation_names_the_key():
    with pytest.raises(UserError, match=r"model\.activation='swish'"):
        SEOMultitask(inputs=SPEC, heads=HEADS, activation="swish")
