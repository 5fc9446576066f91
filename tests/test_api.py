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
