"""trainer.ema.decay: an exponential moving average of the weights, which validation, best.pt and seo-eval
use, kept in checkpoints beside the weights training continues from, and resumed exactly."""

import pytest
import torch
from torch import nn

from seo_cli.checkpoint import CheckpointManager, load_checkpoint
from seo_cli.config import EmaConfig, TrainerConfig
from seo_cli.loading import load_trained
from seo_cli.trainer import fit


def batches(n: int = 6) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def run(tmp_path, epochs: int, decay: float | None = 0.5, resume_from=None, validate=None):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    after_steps = []
    optimizer.register_step_post_hook(lambda *_: after_steps.append(model.weight.detach().clone()))
    result = fit(
        model,
        optimizer,
        nn.functional.mse_loss,
        batches(),
        TrainerConfig(epochs=epochs, progress="plain", monitor="train/loss", ema=EmaConfig(decay=decay)),
        validate=validate,
        checkpoints=CheckpointManager(tmp_path, extra={"config": "x: 1", "preprocessing": {}}),
        resume_from=resume_from,
    )
    return result, model, after_steps


def test_the_average_follows_its_definition_and_is_what_validation_and_best_pt_see(tmp_path):
    validated = []
    result, model, after_steps = run(tmp_path, epochs=2, validate=lambda m: validated.append(m.weight.detach().clone()) or {})
    expected = after_steps[0]  # the first update copies the weights, then ema = d * ema + (1 - d) * w
    for weights in after_steps[1:6]:
        expected = 0.5 * expected + 0.5 * weights
    torch.testing.assert_close(validated[0], expected)  # epoch 1 validated the average
    for weights in after_steps[6:]:
        expected = 0.5 * expected + 0.5 * weights
    torch.testing.assert_close(validated[1], expected)
    last = load_checkpoint(tmp_path / "last.pt")
    torch.testing.assert_close(last["model"]["weight"], expected)  # what seo-eval and best.pt serve
    assert torch.equal(last["training_model"]["weight"], model.weight.detach())  # what training continues from
    assert not torch.equal(last["model"]["weight"], last["training_model"]["weight"])
    assert result.global_step == 12


def test_resume_with_ema_is_bit_identical_to_the_straight_run(tmp_path):
    run(tmp_path / "straight", epochs=3)
    run(tmp_path / "first", epochs=1)
    run(tmp_path / "first", epochs=3, resume_from=load_checkpoint(tmp_path / "first" / "last.pt"))
    straight, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "first"))
    for key in ("model", "training_model"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)


def test_without_ema_the_checkpoint_has_one_set_of_weights(tmp_path):
    run(tmp_path, epochs=1, decay=None)
    assert "training_model" not in load_checkpoint(tmp_path / "last.pt")


def test_seo_train_with_ema_validates_and_serves_the_averaged_weights(train_run):
    summary, run_dir = train_run("model=mlp", "epochs=2", "trainer.ema.decay=0.9")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    trained = load_trained(run_dir / "checkpoints" / "best.pt", torch.device("cpu"), [])
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, best["model"][name])
    assert any(not torch.equal(best["model"][k], best["training_model"][k]) for k in best["model"])
    assert summary["metrics"]["val/loss"] == pytest.approx(best["metrics"]["val/loss"])


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_a_decay_outside_0_1_is_refused_at_start_up(compose_train, decay):
    from seo_cli.errors import UserError
    from seo_cli.validation import check_train_config

    with pytest.raises(UserError, match=rf"^trainer.ema.decay={decay} must be between 0 and 1"):
        check_train_config(compose_train(f"trainer.ema.decay={decay}"))
