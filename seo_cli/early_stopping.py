"""When a monitored metric counts as better, and when training should stop because it no longer gets better."""

import math
from dataclasses import asdict, dataclass


def improves(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    """True when ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (min | max).

    NaN never improves; anything finite improves on a NaN best (no best yet).
    """
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs in a row without an improvement of more than ``min_delta``.

    The loop calls ``update`` once per validated epoch; the state round-trips through checkpoints.
    """

    monitor: str
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    best: float = math.nan
    bad_epochs: int = 0
    stopped_epoch: int = 0  # 1-based epoch at which it asked to stop; 0 while training goes on

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s (1-based) value; returns True when training should stop after it."""
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        # Compared afresh each time, so a run resumed with a larger patience trains on.
        self.stopped_epoch = epoch if self.bad_epochs >= self.patience else 0
        return self.stopped_epoch > 0

    def state_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if k in ("best", "bad_epochs", "stopped_epoch")}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.best, self.bad_epochs, self.stopped_epoch = (
            state["best"],
            state["bad_epochs"],
            state["stopped_epoch"],
        )
