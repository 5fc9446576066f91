"""Temperature scaling (Guo et al. 2017): one scalar T > 0 per classification target divides its logits,
fitted on the validation split by minimising the negative log-likelihood. It changes the confidence of
the predictions, never their ranking or the predicted class.

``seo-eval calibrate=true`` fits the temperatures and writes them into a copy of the checkpoint
(``temperature``: ``{target: T}``); ``seo_cli.loading`` wraps the model of such a checkpoint in
:class:`TemperatureScaled`, so ``seo-eval``, ``seo-predict`` and ``seo-export`` all score with them.
"""

import math

import numpy as np
import torch
from scipy import optimize, special
from torch import Tensor, nn

# Bounds of a temperature, fitted or read from a file: far outside what a trained model needs (0.2 to 10),
# and they keep logits / T finite.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-probability of the true class under softmax(logits / temperature), in float64."""
    log_p = special.log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return float(-np.take_along_axis(log_p, y_true[:, None], axis=1).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL of softmax(logits / T).

    The NLL is convex in 1 / T, so it has one minimum along log T, which bounded Brent search finds to
    1e-6 in log T in about 30 evaluations of the NLL (each one pass over the rows).
    """
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y_true, math.exp(log_t)),
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(min(max(math.exp(result.x), MIN_TEMPERATURE), MAX_TEMPERATURE))


class TemperatureScaled(nn.Module):
    """``model`` whose outputs for the targets of ``temperature`` are divided by their temperature.

    It has no weights of its own: the state dict is the model's, and an ONNX export traces the division.
    """

    def __init__(self, model: nn.Module, temperature: dict[str, float], single_target: str) -> None:
        super().__init__()
        self.model = model
        self.temperature = dict(temperature)
        self.single_target = single_target  # the name of a model's lone output when it returns a tensor

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | Tensor:
        out = self.model(batch)
        if isinstance(out, Tensor):
            return out / self.temperature[self.single_target] if self.single_target in self.temperature else out
        return {name: value / self.temperature[name] if name in self.temperature else value for name, value in out.items()}


def uncalibrated(model: nn.Module) -> nn.Module:
    """The model without temperature scaling: what the temperatures are fitted on."""
    return model.model if isinstance(model, TemperatureScaled) else model


def temperature_problem(value: object, targets: list[str]) -> str | None:
    """What makes a stored ``temperature`` other than one number per classification target in
    [MIN_TEMPERATURE, MAX_TEMPERATURE] (finite, above 0), or None."""
    if not isinstance(value, dict) or set(value) != set(targets):
        return f"a mapping of exactly the classification targets {sorted(targets)} to their temperature"
    for name, t in value.items():
        if type(t) is not float or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:  # NaN fails the comparison
            return f"a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g} for target {str(name)[:60]!r} (not {str(t)[:40]})"
    return None


def apply_temperature(logits: Tensor | np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities softmax(logits / temperature) as a float32 array, as the scorer computes them."""
    logits = torch.as_tensor(logits).float()
    return torch.softmax(logits / temperature, dim=-1).numpy()
