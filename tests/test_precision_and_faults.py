"""Mixed precision, fp16 skipped steps, non-finite losses, gradient clipping, compile and determinism.

Most tests drive ``seo_cli.trainer.fit`` directly with a tiny ``nn.Linear`` on lists of batches, so the
expected weights, losses and gradient norms can be computed by hand; a few go through ``debug=smoke``.
"""

import copy
import math
import os
import random

import numpy as np
import pytest
import torch
from conftest import read_jsonl
from helpers.fitting import validate_on
from torch import nn

import seo_cli.evaluation as evaluation
from seo_cli.checkpoint import CheckpointManager, load_checkpoint, unwrap_model
from seo_cli.config import TrainerConfig
from seo_cli.data.spec import Target
from seo_cli.errors import UserError
from seo_cli.evaluation import TrainingDiverged, predict
from seo_cli.loading import load_trained
from seo_cli.loggers import MetricsSink
from seo_cli.runtime import check_precision, seed_worker, set_deterministic
from seo_cli.trainer import FP16_MAX_SKIPS_IN_A_ROW, fit
from seo_cli.validation import check_train_config

TARGETS = [Target("y", "regression")]


def mse(outputs, labels):
    return ((outputs.squeeze(-1).float() - labels) ** 2).mean()


def linear(seed: int = 0, in_features: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, 1)


def make_batches(n: int, rows: int = 4, seed: int = 1, scale: float = 1.0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (scale * torch.randn(rows, 3, generator=g), scale * torch.randn(rows, generator=g)) for _ in range(n)
    ]


def settings(**kw) -> TrainerConfig:
    kw = {"epochs": 1, "progress": "plain", "monitor": "train/loss", "log_every_n_steps": 100} | kw
    return TrainerConfig(**kw)


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def keep_rng():
    """Put python's, numpy's and torch's global RNG states back after the test."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@pytest.fixture
def restore_determinism(monkeypatch):
    """Deterministic mode and CUBLAS_WORKSPACE_CONFIG are process-wide: undo whatever the test set."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


# --- 1. precision -------------------------------------------------------------------------------------


class DtypeRecorder(nn.Module):
    """A Linear that records the dtype of its output in training and in evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.seen: dict[bool, set] = {True: set(), False: set()}

    def forward(self, x):
        out = self.linear(x)
        self.seen[self.training].add(out.dtype)
        return out


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_forward_runs_under_autocast_of_the_precision_and_metrics_get_float32(precision, dtype, monkeypatch):
    torch.manual_seed(0)
    model = DtypeRecorder()
    loss_inputs: dict[bool, set] = {True: set(), False: set()}
    metric_inputs = []

    def loss_fn(outputs, labels):
        loss_inputs[outputs.requires_grad].add(outputs.dtype)  # val outputs carry no graph
        return mse(outputs, labels)

    real_as_numpy = evaluation.as_numpy

    def spy_as_numpy(outputs, targets):
        metric_inputs.append(outputs.dtype)
        return real_as_numpy(outputs, targets)

    monkeypatch.setattr(evaluation, "as_numpy", spy_as_numpy)
    batches = make_batches(3, scale=0.3)
    result = fit(
        model,
        sgd(model),
        loss_fn,
        batches,
        settings(precision=precision, monitor="val/loss"),
        validate=validate_on(batches[:2], TARGETS, loss_fn, precision),
    )
    assert model.seen == {True: {dtype}, False: {dtype}}  # training and validation forwards
    assert loss_inputs == {True: {dtype}, False: {torch.float32}}  # val loss on float32 outputs
    assert metric_inputs == [torch.float32]
    assert math.isfinite(result.history[0]["val/loss"])
    # predict alone: the model computes in the low precision, the caller gets float32.
    model.seen[False].clear()
    outputs, labels = predict(model, batches, precision)
    assert model.seen[False] == {dtype}
    assert outputs.dtype == torch.float32 and outputs.shape == (12, 1)
    assert torch.equal(labels, torch.cat([y for _, y in batches]))


def test_fp16_saves_its_grad_scaler_in_the_checkpoint_and_restores_it(tmp_path):
    batches = make_batches(3, scale=0.3)
    model = linear()
    fit(
        model,
        sgd(model),
        mse,
        batches,
        settings(precision="fp16"),
        checkpoints=CheckpointManager(tmp_path / "a"),
    )
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["scaler"]["scale"] == 65536.0  # GradScaler's initial scale, no step overflowed
    assert state["scaler"]["_growth_tracker"] == 3  # three unskipped steps in a row

    # Resume from a scaler two steps short of its growth interval at scale 1024: if the state is
    # restored, the second resumed step doubles it to 2048 and restarts the tracker.
    state["scaler"]["scale"] = 1024.0
    state["scaler"]["_growth_tracker"] = state["scaler"]["growth_interval"] - 2
    resumed = linear(seed=5)
    fit(
        resumed,
        sgd(resumed),
        mse,
        batches,
        settings(precision="fp16", epochs=2),
        checkpoints=CheckpointManager(tmp_path / "b"),
        resume_from=state,
    )
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert after["global_step"] == 6
    assert after["scaler"]["scale"] == 2048.0
    assert after["scaler"]["_growth_tracker"] == 1


def test_precision_32_has_no_grad_scaler(tmp_path):
    model = linear()
    fit(
        model,
        sgd(model),
        mse,
        make_batches(2),
        settings(precision="32"),
        checkpoints=CheckpointManager(tmp_path),
    )
    assert torch.load(tmp_path / "last.pt", weights_only=True)["scaler"] is None


def test_check_precision_refuses_an_unknown_precision():
    with pytest.raises(UserError, match=r"^device\.precision=16 is not a precision; use 32, bf16 or fp16\.$"):
        check_precision("16", torch.device("cpu"))
    for ok in ("32", "bf16", "fp16"):
        check_precision(ok, torch.device("cpu"))


def test_check_precision_refuses_bf16_on_a_gpu_without_bfloat16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(UserError) as err:
        check_precision("bf16", torch.device("cuda"))
    message = str(err.value)
    assert message.startswith("device.precision=bf16 needs bfloat16 support, which Tesla T4 lacks")
    assert message.endswith("use device.precision=fp16 or device.precision=32.")
    check_precision("fp16", torch.device("cuda"))  # only bf16 needs the support
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    check_precision("bf16", torch.device("cuda"))


def test_bf16_smoke_run_trains_under_autocast_and_saves_float32_weights(train_run):
    summary_32, _ = train_run("model=mlp")
    summary, run_dir = train_run("model=mlp", "device.precision=bf16")
    assert summary["status"] == "ok"
    assert math.isfinite(summary["metrics"]["val/loss"])
    # Same seed and data: only bfloat16 rounding makes the two runs differ.
    assert summary["metrics"]["val/loss"] != summary_32["metrics"]["val/loss"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    assert state["scaler"] is None  # bf16 needs no scaler


def test_fp16_smoke_run_saves_the_scaler_its_skips_left(train_run):
    summary, run_dir = train_run("model=mlp", "device.precision=fp16")
    assert math.isfinite(summary["metrics"]["val/loss"])
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    # 27 steps never reach the growth interval: each skipped step halved the initial scale once.
    assert state["scaler"]["scale"] == 65536.0 * 0.5 ** summary["fp16_skipped_steps"]
    assert state["position"]["fp16_skipped_steps"] == summary["fp16_skipped_steps"]


# --- 2. fp16 skipped steps ------------------------------------------------------------------------------


class InfGradAt(nn.Module):
    """A Linear whose output gradient is infinite on training forward number ``bad`` (1-based); it
    records the weights it sees before each training forward."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)
        self.bad, self.calls, self.before = bad, 0, []

    def forward(self, x):
        out = self.linear(x)
        if self.training:
            self.calls += 1
            self.before.append(weights(self))
            if self.calls == self.bad:
                out.register_hook(lambda g: torch.full_like(g, math.inf))
        return out


def test_fp16_skips_a_step_with_infinite_gradients_and_counts_it(tmp_path):
    model = InfGradAt(bad=2)
    sink = MetricsSink(tmp_path / "m.jsonl")
    result = fit(
        model,
        sgd(model),
        # A small L1 loss: its gradients times the initial scale of 65536 stay inside float16's range,
        # so only the injected step overflows.
        lambda out, y: 0.1 * (out.squeeze(-1).float() - y).abs().mean(),
        make_batches(4, scale=0.1),
        settings(precision="fp16", log_every_n_steps=4),
        sink=sink,
    )
    sink.close()
    assert result.fp16_skipped_steps == 1
    snapshots = [*model.before, weights(model)]  # before steps 1..4, then after step 4
    for step in range(1, 5):
        unchanged = all(torch.equal(a, b) for a, b in zip(snapshots[step - 1], snapshots[step], strict=True))
        assert unchanged == (step == 2), f"step {step}"
    row = read_jsonl(tmp_path / "m.jsonl")[0]
    assert row["step"] == 4 and row["train/fp16_skipped_steps"] == 1.0


class NanLoss:
    """MSE, times ``factor`` on the training calls (1-based) for which ``bad(call)`` is true."""

    def __init__(self, bad, factor: float = math.nan) -> None:
        self.bad, self.factor, self.calls = bad, factor, 0

    def __call__(self, outputs, labels):
        loss = mse(outputs, labels)
        if not outputs.requires_grad:  # validation
            return loss
        self.calls += 1
        return loss * self.factor if self.bad(self.calls) else loss


def test_fp16_stops_after_too_many_skipped_steps_in_a_row():
    model = linear()
    initial = weights(model)
    loss_fn = NanLoss(lambda call: True)
    with pytest.raises(TrainingDiverged) as err:
        fit(
            model,
            sgd(model),
            loss_fn,
            make_batches(FP16_MAX_SKIPS_IN_A_ROW + 10, scale=0.3),
            settings(precision="fp16"),
        )
    n = FP16_MAX_SKIPS_IN_A_ROW
    assert f"under device.precision=fp16 the last {n} optimizer steps (up to step {n})" in str(err.value)
    assert loss_fn.calls == n  # stopped right at the limit, not at the end of the epoch
    assert all(torch.equal(a, b) for a, b in zip(initial, weights(model), strict=True))


def test_fp16_skips_fewer_than_the_limit_in_a_row_do_not_stop_the_run():
    model = linear()
    n = FP16_MAX_SKIPS_IN_A_ROW
    # n - 1 bad steps, one good, n - 1 bad again: 2n - 2 skips, never n in a row.
    loss_fn = NanLoss(lambda call: call != n)
    result = fit(
        model,
        sgd(model),
        loss_fn,
        make_batches(2 * n - 1, scale=0.3),
        settings(precision="fp16"),
    )
    assert result.fp16_skipped_steps == 2 * n - 2
    assert result.global_step == 2 * n - 1


# --- 3. NaN / Inf loss under precision 32 ------------------------------------------------------------------


@pytest.mark.parametrize(("every_n_steps", "saved_step"), [(None, 4), (5, 5), (7, 4)])
def test_nan_loss_names_the_step_and_last_finite_loss_and_never_saves_nan_weights(
    tmp_path, every_n_steps, saved_step
):
    batches = make_batches(4)
    model = linear()
    reference = copy.deepcopy(model)
    # Two epochs of 4 steps; the loss is NaN from step 6 on (the second batch of epoch 2).
    with pytest.raises(UserError) as err:
        fit(
            model,
            sgd(model),
            NanLoss(lambda call: call >= 6),
            batches,
            settings(epochs=2, log_every_n_steps=100),
            checkpoints=CheckpointManager(tmp_path, every_n_steps=every_n_steps),
        )
    assert isinstance(err.value, TrainingDiverged)

    # The same SGD steps by hand: weights after `saved_step` steps, and the loss of step 5.
    optimizer = sgd(reference)
    losses = []
    for step, (x, y) in enumerate(batches + batches, start=1):
        if step == saved_step + 1:
            saved = weights(reference)
        if step == 6:
            break
        loss = mse(reference(x), y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    message = str(err.value)
    assert message.startswith(
        f"the training loss became NaN or infinite at step 6; the last finite loss was {losses[4]:.6g} at step 5;"
    )
    assert "last.pt holds the last weights saved before it" in message

    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["global_step"] == saved_step and state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    torch.testing.assert_close([state["model"]["weight"], state["model"]["bias"]], saved)
    assert not torch.isfinite(model.weight).all()  # the live weights did go bad


def test_a_nan_before_any_checkpoint_does_not_claim_one_holds_the_weights(tmp_path):
    model = linear()
    with pytest.raises(TrainingDiverged) as err:
        fit(
            model,
            sgd(model),
            NanLoss(lambda call: call >= 1),
            make_batches(4),
            settings(epochs=1, log_every_n_steps=100),
            checkpoints=CheckpointManager(tmp_path),
        )
    assert str(err.value).startswith("the training loss became NaN or infinite at step 1; lower learning_rate")
    assert "holds the last weights" not in str(err.value) and not (tmp_path / "last.pt").exists()


def test_infinite_loss_at_the_first_step_names_it_and_writes_no_checkpoint(tmp_path):
    model = linear()
    with pytest.raises(TrainingDiverged) as err:
        fit(
            model,
            sgd(model),
            NanLoss(lambda call: call == 1, factor=math.inf),
            make_batches(3),
            settings(),
            checkpoints=CheckpointManager(tmp_path),
        )
    assert str(err.value).startswith(
        "the training loss became NaN or infinite at step 1; lower learning_rate"
    )
    assert not (tmp_path / "last.pt").exists()


def test_training_diverged_is_a_user_error():
    # seo-train's main prints a UserError's message and exits 1 without a traceback.
    assert issubclass(TrainingDiverged, UserError)


# --- 4. gradient clipping -----------------------------------------------------------------------------------

W0 = torch.tensor([[0.5, -1.0, 2.0]])
B0 = torch.tensor([0.1])
X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.3, 0.8], [-1.2, 0.4, 0.3], [2.0, 1.0, 1.5]])
Y = torch.tensor([0.3, -0.7, 1.1, 2.2])


def fixed_linear(w=W0, b=B0) -> nn.Linear:
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(b)
    return model


def mse_grads(w, b, x, y) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The gradient of mean((x w^T + b - y)^2) by hand, in float64, and its total 2-norm."""
    w, b, x, y = (t.double() for t in (w, b, x, y))
    r = (x @ w.T).squeeze(-1) + b - y
    gw = (2 / len(y) * r @ x).reshape(1, -1)
    gb = (2 / len(y) * r.sum()).reshape(1)
    return gw, gb, math.sqrt(float((gw**2).sum() + (gb**2).sum()))


def clipped_fit(tmp_path, batches, lr=0.1, **kw):
    model = fixed_linear()
    sink = MetricsSink(tmp_path / "m.jsonl")
    fit(
        model,
        sgd(model, lr=lr),
        mse,
        batches,
        settings(log_every_n_steps=len(batches), **kw),
        sink=sink,
    )
    sink.close()
    return model, read_jsonl(tmp_path / "m.jsonl")


def test_norm_clipping_logs_the_pre_clip_norm_and_scales_the_update(tmp_path):
    gw, gb, norm = mse_grads(W0, B0, X, Y)
    clip = 0.5
    assert norm > 4 * clip  # the clip bites
    model, rows = clipped_fit(tmp_path, [(X, Y)], gradient_clip_val=clip, gradient_clip_algorithm="norm")
    assert rows[0]["step"] == 1
    assert rows[0]["train/grad_norm"] == pytest.approx(norm, rel=1e-5)
    coef = clip / (norm + 1e-6)  # clip_grad_norm_'s factor
    torch.testing.assert_close(model.weight.detach().double(), W0.double() - 0.1 * coef * gw)
    torch.testing.assert_close(model.bias.detach().double(), B0.double() - 0.1 * coef * gb)
    # The update's own norm is lr * clip.
    update = torch.cat([(W0 - model.weight.detach()).flatten(), B0 - model.bias.detach()])
    assert update.norm().item() == pytest.approx(0.1 * clip, rel=1e-5)


def test_logged_grad_norm_is_the_mean_over_the_logging_window(tmp_path):
    clip, lr = 0.5, 0.1
    x2, y2 = X.flip(0), Y * 0.5
    gw1, gb1, n1 = mse_grads(W0, B0, X, Y)
    coef = min(1.0, clip / (n1 + 1e-6))
    w1, b1 = W0.double() - lr * coef * gw1, B0.double() - lr * coef * gb1
    _, _, n2 = mse_grads(w1, b1, x2, y2)
    assert abs(n1 - n2) > 0.1  # a mean, not either value
    _, rows = clipped_fit(tmp_path, [(X, Y), (x2, y2)], lr=lr, gradient_clip_val=clip)
    logged = [row for row in rows if "train/grad_norm" in row]
    assert [row["step"] for row in logged] == [2]
    assert logged[0]["train/grad_norm"] == pytest.approx((n1 + n2) / 2, rel=1e-5)


def test_value_clipping_clamps_each_gradient_element(tmp_path):
    gw, gb, norm = mse_grads(W0, B0, X, Y)
    clip = 1.0
    grads = torch.cat([gw.flatten(), gb])
    assert (grads.abs() > clip).any() and (grads.abs() < clip).any()  # some clamped, some not
    model, rows = clipped_fit(
        tmp_path, [(X, Y)], lr=1.0, gradient_clip_val=clip, gradient_clip_algorithm="value"
    )
    torch.testing.assert_close(model.weight.detach().double(), W0.double() - gw.clamp(-clip, clip))
    torch.testing.assert_close(model.bias.detach().double(), B0.double() - gb.clamp(-clip, clip))
    assert rows[0]["train/grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clamping


def test_without_clipping_no_grad_norm_is_logged_and_the_update_is_the_full_gradient(tmp_path):
    gw, gb, _ = mse_grads(W0, B0, X, Y)
    model, rows = clipped_fit(tmp_path, [(X, Y)], lr=0.1)
    assert rows and not any("train/grad_norm" in row for row in rows)
    torch.testing.assert_close(model.weight.detach().double(), W0.double() - 0.1 * gw)
    torch.testing.assert_close(model.bias.detach().double(), B0.double() - 0.1 * gb)


def test_fp16_clipping_sees_the_unscaled_gradients(tmp_path):
    # Small values, so the gradients times the scaler's 65536 stay inside float16's range.
    x, y = X * 0.1, (X * 0.1 @ W0.T).squeeze(-1) + B0 + torch.tensor([0.2, -0.1, 0.15, -0.2])
    gw, gb, norm = mse_grads(W0, B0, x, y)
    clip = norm / 4
    model, rows = clipped_fit(tmp_path, [(x, y)], gradient_clip_val=clip, precision="fp16")
    assert rows[0]["train/fp16_skipped_steps"] == 0.0
    assert rows[0]["train/grad_norm"] == pytest.approx(norm, rel=1e-2)  # not 65536 times it
    coef = clip / norm
    torch.testing.assert_close(
        model.weight.detach().double(), W0.double() - 0.1 * coef * gw, rtol=1e-3, atol=1e-4
    )


# --- 5. compile -----------------------------------------------------------------------------------------


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend: the same wrapper and graph capture, without the tens of
    seconds of C++ code generation a cold inductor cache costs on a CPU. Returns the modules compiled."""
    real_compile = torch.compile
    compiled = []

    def compile_eagerly(model, *args, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="eager")

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    yield compiled
    torch._dynamo.reset()


def test_fit_on_a_compiled_model_saves_weights_without_the_wrapper_prefix(tmp_path, eager_compile):
    model = linear()
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    assert set(compiled.state_dict()) == {"_orig_mod.weight", "_orig_mod.bias"}  # what unwrapping avoids
    fit(
        compiled,
        sgd(compiled),
        mse,
        make_batches(3),
        settings(),
        checkpoints=CheckpointManager(tmp_path),
    )
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state["model"]) == {"weight", "bias"}
    plain = nn.Linear(3, 1)
    plain.load_state_dict(state["model"], strict=True)
    assert torch.equal(plain.weight, model.weight) and torch.equal(plain.bias, model.bias)


def test_compile_true_run_writes_checkpoints_an_uncompiled_model_loads(train_run, eager_compile):
    summary, run_dir = train_run("compile=true", "model=mlp")
    assert summary["status"] == "ok"
    assert len(eager_compile) == 1  # compile=true wrapped the model
    trained = eager_compile[0]
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run_dir / "checkpoints" / name)
        assert state["model"] and not any(key.startswith("_orig_mod.") for key in state["model"])
        load_trained(run_dir / "checkpoints" / name, torch.device("cpu"), [])  # an uncompiled model, strict
    # last.pt holds the trained weights of the module under the wrapper.
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(last[k], v.cpu()) for k, v in trained.state_dict().items())


# --- 6. deterministic ---------------------------------------------------------------------------------------


def test_set_deterministic_turns_torch_deterministic_mode_on_and_off(restore_determinism):
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_set_deterministic_keeps_a_cublas_workspace_config_the_user_set(restore_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_reaches_torch_for_the_run_and_each_job_sets_it_anew(train_run, restore_determinism, monkeypatch):
    """On a CPU the two settings train the same weights, so the flag is checked where it acts: torch's
    deterministic mode is on while a deterministic=true run trains, and off in the next job without it
    (a sweep runs its jobs in one process)."""
    from seo_cli.models.mlp import MLP

    seen = []
    forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, batch: seen.append(torch.are_deterministic_algorithms_enabled()) or forward(self, batch))
    torch.use_deterministic_algorithms(False)
    train_run("model=mlp", "deterministic=true")
    assert seen and all(seen)
    seen.clear()
    train_run("model=mlp")
    assert seen and not any(seen)


# --- 7. seed_worker -----------------------------------------------------------------------------------------


# The second seed is above 2**32 and its remainder above 2**31: only `% 2**32` gives that remainder.
@pytest.mark.parametrize("seed", [123, 2**40 + 2**31 + 7])
def test_seed_worker_seeds_python_and_numpy_from_the_torch_seed(keep_rng, seed):
    torch.manual_seed(seed)  # what a DataLoader worker does before calling worker_init_fn
    random.seed(0)
    np.random.seed(0)
    seed_worker(0)
    drawn = random.random(), np.random.rand()
    expected = random.Random(seed % 2**32).random(), np.random.RandomState(seed % 2**32).rand()
    assert drawn == expected
    torch.manual_seed(seed + 1)
    seed_worker(1)
    assert (random.random(), np.random.rand()) != expected


# --- 8. validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("device.precision=16", "device.precision=16 must be 32, bf16 or fp16."),
        (
            "trainer.gradient_clip_val=0",
            "trainer.gradient_clip_val=0.0 must be positive, e.g. 1.0, or null for no clipping.",
        ),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be at least 1."),
    ],
)
def test_bad_precision_and_trainer_values_are_refused(compose_train, override, expected):
    with pytest.raises(UserError) as err:
        check_train_config(compose_train(override))
    assert str(err.value).splitlines() == [expected]


def test_good_precision_and_trainer_values_pass(compose_train):
    for overrides in (
        ["device.precision=bf16", "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2"],
        ["device.precision=fp16", "trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=value"],
    ):
        check_train_config(compose_train(*overrides))


def test_a_huge_learning_rate_stops_naming_the_step_and_only_what_is_saved(train_run):
    with pytest.raises(TrainingDiverged) as err:
        train_run("model=mlp", "learning_rate=1e10", "scheduler=none")
    message = str(err.value)
    assert "NaN or infinite" in message and "lower learning_rate" in message
    assert "holds the last weights" not in message  # nothing was saved before the weights went bad
