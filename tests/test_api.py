"""The README's Python API example runs as written and learns its task."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    example = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    best_epoch, accuracy, confusion = capsys.readouterr().out.split(" ", 2)
    assert int(best_epoch) == 5
    assert float(accuracy) == pytest.approx(0.998, abs=0.002)
    assert (tmp_path / "outputs" / "notebook" / "checkpoints" / "best.pt").is_file()
    rows = (tmp_path / "outputs" / "notebook" / "metrics.jsonl").read_text().splitlines()
    assert sum('"epoch"' in row for row in rows) == 5


def test_trainer_regression_and_dataloader_inputs(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from seo_cli.api import ModelEvaluator, ModelTrainer

    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(512)
    model = torch.nn.Linear(4, 1)
    loader = DataLoader(TensorDataset(x[:400], y[:400]), batch_size=32, shuffle=True)
    result = ModelTrainer(
        model, loader, TensorDataset(x[400:], y[400:]), task_type="regression", epochs=20, lr=5e-2
    ).train()
    assert result.history[-1]["val/target/r2"] > 0.98
    metrics = ModelEvaluator(model).evaluate(
        DataLoader(TensorDataset(x[400:], y[400:]), batch_size=64), "regression"
    )
    assert metrics["r2"] == pytest.approx(result.history[-1]["val/target/r2"], abs=1e-6)
    assert metrics["rmse"] == pytest.approx(metrics["mse"] ** 0.5)


def _pairs(n=64, classes=2, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, (x[:, 0] > 0).long() if classes == 2 else torch.zeros(n, dtype=torch.long)


def test_train_loss_is_the_row_weighted_mean_of_the_epoch():
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(70)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: the epoch's loss is computable
    result = ModelTrainer(model, (x, y), optimizer=optimizer, batch_size=32, epochs=1, device="cpu").train()
    expected = torch.nn.functional.cross_entropy(model(x), y).item()  # 32 + 32 + 6 rows, weighted by rows
    assert result.history[0]["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_a_metric_that_is_always_nan_keeps_the_first_epoch_as_best(tmp_path):
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(64)
    _, one_class = _pairs(32, classes=1)
    trainer = ModelTrainer(
        torch.nn.Linear(3, 2),
        (x, y),
        (x[:32], one_class),
        epochs=3,
        device="cpu",
        output_dir=tmp_path,
        monitor="val/target/roc_auc",
        mode="max",
    )
    result = trainer.train()
    assert result.best_epoch == 1
    assert torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1


def test_one_shot_iterators_and_empty_validation_data_are_clear_errors():
    import torch

    from seo_cli.api import ModelTrainer
    from seo_cli.errors import UserError

    x, y = _pairs(64)
    generator = ((x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16))
    with pytest.raises(UserError, match="one-shot iterator"):
        ModelTrainer(torch.nn.Linear(3, 2), generator, epochs=1, device="cpu").train()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    with pytest.raises(UserError, match="evaluation data has no batches"):
        ModelTrainer(torch.nn.Linear(3, 2), batches, val_data=[], epochs=1, device="cpu").train()
    assert ModelTrainer(torch.nn.Linear(3, 2), batches, epochs=2, device="cpu").train().global_step == 8


def test_model_trainer_takes_the_command_lines_trainer_dataclass_and_its_fields_by_name(tmp_path):
    import dataclasses

    import torch

    from seo_cli.api import ModelTrainer
    from seo_cli.config import EarlyStoppingConfig, TrainerConfig

    x, y = _pairs(64)
    config = TrainerConfig(epochs=6, progress="plain", early_stopping=EarlyStoppingConfig(patience=1, min_delta=10.0))
    trainer = ModelTrainer(torch.nn.Linear(3, 2), (x, y), (x, y), config=config, device="cpu")
    result = trainer.train()
    assert dataclasses.asdict(trainer.config) == dataclasses.asdict(config)  # the CLI's dataclass, as given
    assert (len(result.history), result.stopped_early) == (2, True)  # nothing improves by 10: stops after 2
    by_name = ModelTrainer(torch.nn.Linear(3, 2), (x, y), epochs=3, accumulate_grad_batches=2, batch_size=16, device="cpu")
    assert (by_name.config.epochs, by_name.config.accumulate_grad_batches) == (3, 2)
    assert by_name.train().global_step == 3 * 2  # 4 batches an epoch, 2 per step
    with pytest.raises(TypeError, match="ModelTrainer got epoch, which is not a trainer knob"):
        ModelTrainer(torch.nn.Linear(3, 2), (x, y), epoch=3)


def test_an_unknown_setting_raises_and_criterion_is_the_loss(tmp_path):
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(64)
    trainer = ModelTrainer(torch.nn.Linear(3, 2), (x, y), epochs=1, device="cpu")
    calls = []

    def my_loss(out, target):
        calls.append(out.shape[0])
        return torch.nn.functional.cross_entropy(out, target)

    trainer.criterion = my_loss  # Lightning / HF users' name for it
    assert trainer.loss_fn is my_loss and trainer.criterion is my_loss
    trainer.train()
    assert sum(calls) == 64
    with pytest.raises(AttributeError, match="ModelTrainer has no setting 'lr_scheduler'"):
        trainer.lr_scheduler = None


def test_resume_auto_continues_to_the_weights_of_the_straight_run(tmp_path):
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(96)

    def run(output_dir, epochs, resume=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
        ModelTrainer(model, (x, y), (x, y), epochs=epochs, batch_size=16, device="cpu", output_dir=output_dir, resume=resume).train()
        return model

    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "split", 1)
    resumed = run(tmp_path / "split", 3, resume="auto")
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert sum('"epoch"' in row for row in rows) == 3


def test_a_warm_up_schedule_by_name_spans_the_run():
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(64)
    trainer = ModelTrainer(
        torch.nn.Linear(3, 2), (x, y), epochs=2, batch_size=16, lr=0.1, device="cpu",
        scheduler="warmup_cosine", scheduler_args={"warmup_steps": 4}, log_every_n_steps=1,
    )  # fmt: skip
    trainer.train()
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at 0 after 8 steps
    with pytest.raises(Exception, match="scheduler='linear' is not a schedule"):
        ModelTrainer(torch.nn.Linear(3, 2), (x, y), scheduler="linear")


def test_several_targets_from_a_dict_output_model():
    import torch

    from seo_cli.api import ModelEvaluator, ModelTrainer

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(3, 8)
            self.quality, self.ctr = torch.nn.Linear(8, 2), torch.nn.Linear(8, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"quality": self.quality(h), "ctr": self.ctr(h).squeeze(-1)}

    torch.manual_seed(0)
    x = torch.randn(256, 3)
    labels = {"quality": (x[:, 0] > 0).long(), "ctr": x[:, 1] * 0.5}
    model = TwoHeads()
    tasks = {"quality": "classification", "ctr": "regression"}
    result = ModelTrainer(model, (x, labels), (x, labels), task_type=tasks, epochs=30, lr=3e-2, device="cpu").train()
    last = result.history[-1]
    assert last["val/quality/accuracy"] > 0.95 and last["val/ctr/r2"] > 0.9
    report = ModelEvaluator(model, device="cpu").evaluate((x, labels), task_type=tasks)
    assert report["quality"]["accuracy"] == pytest.approx(last["val/quality/accuracy"])
    assert report["ctr"]["r2"] == pytest.approx(last["val/ctr/r2"])


def test_the_evaluator_reports_each_output_of_a_multi_output_regression():
    import torch
    from sklearn.metrics import r2_score

    from seo_cli.api import ModelEvaluator

    torch.manual_seed(0)
    x = torch.randn(200, 2)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    y = torch.stack([x[:, 0], 0.5 * x[:, 1]], dim=1)  # output 0 exact, output 1 off by a factor of 2
    report = ModelEvaluator(model, device="cpu").evaluate((x, y), task_type="regression")
    assert [round(r["r2"], 6) for r in report["per_output"]] == [1.0, round(r2_score(y[:, 1], x[:, 1]), 6)]
    assert report["r2"] == pytest.approx((report["per_output"][0]["r2"] + report["per_output"][1]["r2"]) / 2)


def test_drop_last_leaves_the_short_batch_out():
    import torch

    from seo_cli.api import ModelTrainer

    x, y = _pairs(70)
    kept = ModelTrainer(torch.nn.Linear(3, 2), (x, y), epochs=1, batch_size=32, device="cpu").train()
    dropped = ModelTrainer(torch.nn.Linear(3, 2), (x, y), epochs=1, batch_size=32, drop_last=True, device="cpu").train()
    assert (kept.global_step, dropped.global_step) == (3, 2)
