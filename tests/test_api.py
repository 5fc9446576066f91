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
