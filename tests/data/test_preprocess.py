"""Preprocessing: fitted on the training rows only, and stored as plain data that loads back identically."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer

from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.errors import UserError

TITLES = [
    "seo guide for beginners",
    "buy cheap shoes online",
    "seo guide to links",
    "buy shoes",
    "how to rank",
]
BODIES = ["learn seo step by step", "shoes shoes shoes on sale", "links and rank", "sale today", "rank pages"]


def make_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "title": TITLES * 2,
            "body": BODIES * 2,
            "backlinks": [1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 200.0, 300.0, 400.0, 500.0],
            "cms": ["wp", "shopify", "wp", "wp", "shopify", "wp", "ghost", "shopify", "wp", "ghost"],
            "label": [10, 2, 1, 2, 10, 1, 2, 10, 1, 2],
            "ctr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9],
        }
    )


TARGETS = [Target("label", CLASSIFICATION), Target("ctr", REGRESSION)]


def fit(frame: pd.DataFrame, **overrides) -> Preprocessor:
    kwargs = dict(
        text_columns=["title", "body"],
        numeric_columns=["backlinks"],
        categorical_columns=["cms"],
        targets=TARGETS,
        max_length=8,
        vocab_size=120,
    )
    return Preprocessor.fit(frame, **(kwargs | overrides))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def pre(frame) -> Preprocessor:
    return fit(frame.iloc[:5])  # the first five rows are the training split


def test_numeric_scaling_uses_training_rows_only(pre, frame):
    # Training backlinks 1..5: mean 3, population std sqrt(2); the full column's mean would be 151.5.
    assert pre.numeric_mean == pytest.approx([3.0])
    assert pre.numeric_scale == pytest.approx([np.sqrt(2.0)])
    numeric = pre.transform_inputs(frame)["numeric"]
    assert numeric.dtype == torch.float32
    expected = (frame["backlinks"].to_numpy() - 3.0) / np.sqrt(2.0)
    np.testing.assert_allclose(numeric[:, 0].numpy(), expected, rtol=1e-6)
    assert numeric[:5, 0].mean().item() == pytest.approx(0.0, abs=1e-6)


def test_categorical_codes_start_at_one_and_unknown_is_zero(pre, frame):
    assert pre.categories == {"cms": ["shopify", "wp"]}  # ghost appears only after the training rows
    codes = pre.transform_inputs(frame)["categorical"][:, 0].tolist()
    assert codes == [2, 1, 2, 2, 1, 2, 0, 1, 2, 0]
    assert pre.input_spec.categorical_cardinalities == [3]  # two known + the unknown slot


def test_integer_like_class_names_sort_numerically(pre, frame):
    assert pre.class_names == {"label": ["1", "2", "10"]}  # not "1", "10", "2"
    assert pre.heads == {"label": 3, "ctr": 1}
    assert pre.transform_targets(frame.iloc[:5])["label"].tolist() == [2, 1, 0, 1, 2]


def test_text_class_names_sort_alphabetically(frame):
    labelled = frame.assign(label=["nav", "buy", "info", "buy", "nav"] * 2)
    pre = fit(labelled.iloc[:5], text_columns=[])
    assert pre.class_names == {"label": ["buy", "info", "nav"]}
    assert pre.transform_targets(labelled.iloc[:5])["label"].tolist() == [2, 0, 1, 0, 2]


def test_regression_targets_are_standardised_with_training_statistics(pre, frame):
    # Training ctr 0.1..0.5: mean 0.3, population std sqrt(0.02).
    mean, std = pre.target_scale["ctr"]
    assert (mean, std) == pytest.approx((0.3, np.sqrt(0.02)))
    y = pre.transform_targets(frame)["ctr"]
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), (frame["ctr"].to_numpy() - 0.3) / np.sqrt(0.02), rtol=1e-5)


def test_constant_regression_target_keeps_std_one(frame):
    pre = fit(frame.iloc[5:], text_columns=[], targets=[Target("ctr", REGRESSION)])
    assert pre.target_scale == {"ctr": (pytest.approx(0.9), 1.0)}


def test_tokens_are_padded_with_zero_and_truncated_to_max_length(pre):
    tokenizer = Tokenizer.from_str(pre.tokenizer_json)
    assert tokenizer.token_to_id("[PAD]") == 0
    rows = pd.DataFrame({"title": ["seo", "seo guide " * 10], "body": ["", "rank"]})
    tokens = pre.transform_inputs(rows.assign(backlinks=0.0, cms="wp"))["tokens"]
    assert tokens.shape == (2, 8) and tokens.dtype == torch.int64
    short = tokenizer.encode("seo [SEP] ").ids
    assert 0 < len(short) < 8
    assert tokens[0].tolist() == short + [0] * (8 - len(short))
    long_ids = tokenizer.encode("seo guide " * 10 + "[SEP] rank").ids
    assert len(long_ids) > 8
    assert tokens[1].tolist() == long_ids[:8]
    assert 0 not in tokens[1].tolist()


def test_text_columns_are_joined_with_sep(pre):
    sep = Tokenizer.from_str(pre.tokenizer_json).token_to_id("[SEP]")
    tokens = pre.transform_inputs(
        pd.DataFrame({"title": ["seo"], "body": ["rank"], "backlinks": [0.0], "cms": ["wp"]})
    )
    assert sep in tokens["tokens"][0].tolist()
    assert pre.input_spec.max_length == 8
    assert pre.input_spec.vocab_size == Tokenizer.from_str(pre.tokenizer_json).get_vocab_size()


def test_state_round_trips_through_a_weights_only_torch_file(pre, frame):
    buffer = io.BytesIO()
    torch.save({"preprocessing": pre.to_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["preprocessing"]
    loaded = Preprocessor.from_state(state)
    assert loaded == pre
    before, after = pre.transform_inputs(frame), loaded.transform_inputs(frame)
    assert before.keys() == after.keys() == {"numeric", "categorical", "tokens"}
    for key in before:
        assert torch.equal(before[key], after[key])
    for key, value in pre.transform_targets(frame).items():
        assert torch.equal(value, loaded.transform_targets(frame)[key])


def test_class_unseen_in_training_names_the_target_and_class(pre, frame):
    rows = frame.iloc[5:].assign(label=[1, 2, 7, 1, 2])
    with pytest.raises(UserError, match=r"target label has class '7' in val but not in the training split"):
        pre.transform_targets(rows, "val")


def test_without_text_columns_there_are_no_tokens(frame):
    pre = fit(frame.iloc[:5], text_columns=[])
    assert set(pre.transform_inputs(frame)) == {"numeric", "categorical"}
    assert pre.input_spec.vocab_size == 0 and pre.input_spec.max_length == 0


def test_max_length_from_the_data_is_the_99th_percentile_rounded_up_to_8(caplog):
    """Row i holds i + 1 words ("seo" repeated): token counts 1..100, the 99th percentile 99.01 -> 100,
    rounded up to a multiple of 8 -> 104; longer rows would be cut there."""
    rows = pd.DataFrame({"title": [" ".join(["seo"] * n) for n in range(1, 101)], "label": ["a", "b"] * 50})
    targets = [Target("label", CLASSIFICATION)]
    with caplog.at_level("INFO", logger="seo_cli.data.preprocess"):
        pre = Preprocessor.fit(
            rows, text_columns=["title"], numeric_columns=[], categorical_columns=[], targets=targets,
            max_length=None, vocab_size=50,
        )  # fmt: skip
    assert pre.max_length == 104
    assert "data.max_length=null: 104 tokens, the 99th percentile of 100 training rows' token counts (100)" in caplog.text
    assert pre.encode_inputs(rows)["tokens"].shape == (100, 104)
    short = Preprocessor.fit(
        rows.head(5), text_columns=["title"], numeric_columns=[], categorical_columns=[], targets=targets,
        max_length=None, vocab_size=50,
    )  # fmt: skip
    assert short.max_length == 8  # never below 8
