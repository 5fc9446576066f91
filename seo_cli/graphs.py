"""``trainer.cuda_graphs``: the training step (forward, loss, backward, clipping, optimizer step)
captured once in a CUDA graph and replayed from then on: one launch per step instead of hundreds, and
no Python between the kernels.

A batch of another shape than the captured one (an epoch's short last batch) takes the eager path. The
learning rate becomes a device tensor the scheduler fills in place. Capture needs warm-up steps on a
side stream; they run on the first batch and are then undone in place (weights, optimizer state and the
CUDA generator put back), so the run trains on its own steps only.
"""

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from seo_cli.errors import UserError
from seo_cli.evaluation import Batch, batch_size_of, move_to
from seo_cli.runtime import autocast

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


class StepGraph:
    """Replays the captured step for windows of the captured shapes; ``replay`` answers None otherwise,
    and always when ``enabled`` is false, so the loop calls it unconditionally."""

    def __init__(
        self,
        enabled: bool,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        optimizer: torch.optim.Optimizer,
        precision: str,
        clip: Callable[[], Tensor | None],
    ) -> None:
        self.enabled, self.model, self.loss_fn, self.optimizer = enabled, model, loss_fn, optimizer
        self.precision, self.clip = precision, clip
        self.graph: torch.cuda.CUDAGraph | None = None

    def replay(self, window: list[tuple[Batch, Batch]]) -> tuple[Tensor, int, Tensor | None] | None:
        """One training step on ``window``: (the sum of its row losses, its rows, the pre-clip norm), or
        None where the eager step must run instead."""
        if not self.enabled or len(window) != 1:
            return None
        if self.graph is None:
            self._capture(window)
        if _shapes(window) != self.shapes:
            # The last replay's gradients must not add to the eager step's (a replay assigns them afresh).
            self.optimizer.zero_grad(set_to_none=True)
            return None
        inputs, labels = window[0]
        pytree.tree_map(lambda static, new: static.copy_(new, non_blocking=True), self.inputs, move_to(inputs, self.device))
        pytree.tree_map(lambda static, new: static.copy_(new, non_blocking=True), self.labels, move_to(labels, self.device))
        self.graph.replay()
        return self.loss * self.rows, self.rows, None if self.norm is None else self.norm.clone()

    def _step(self) -> tuple[Tensor, Tensor | None]:
        with autocast(self.device, self.precision):
            loss = self.loss_fn(self.model(self.inputs), self.labels)
        loss.backward()
        norm = self.clip()
        self.optimizer.step()
        return loss.detach().float(), norm

    def _capture(self, window: list[tuple[Batch, Batch]]) -> None:
        """Raises:
        UserError: the step could not be captured (a host sync inside the model or the loss).
        """
        model, optimizer = self.model, self.optimizer
        device = self.device = next(model.parameters()).device
        inputs, labels = window[0]
        self.shapes, self.rows = _shapes(window), batch_size_of(labels)
        self.inputs = pytree.tree_map(torch.clone, move_to(inputs, device))
        self.labels = pytree.tree_map(torch.clone, move_to(labels, device))
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
            for p in params
            if p in optimizer.state
        }
        rng = torch.cuda.get_rng_state(device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # captured with no gradients: each replay assigns them
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.norm = self._step()
        except RuntimeError as err:
            raise UserError(
                f"trainer.cuda_graphs=true could not capture the training step ({str(err).strip().splitlines()[0][:160]}); "
                "the model or loss reads a value back to the host inside the step; set trainer.cuda_graphs=false."
            ) from err
        with torch.no_grad():
            for param, saved in zip(params, saved_params, strict=True):
                param.copy_(saved)
            for param in params:
                for key, value in optimizer.state[param].items():
                    if isinstance(value, Tensor):  # state the warm-up created starts from zero, as it would have
                        value.copy_(saved_state[param][key]) if param in saved_state else value.zero_()
        torch.cuda.set_rng_state(rng, device)
        log.info("trainer.cuda_graphs: the training step is captured for batches of %d rows.", self.rows)


def _shapes(window: list) -> tuple:
    """The shapes and dtypes of a window's tensors: what a captured graph is specialised to."""
    leaves, spec = pytree.tree_flatten(window)
    return str(spec), tuple((tuple(t.shape), t.dtype) for t in leaves if isinstance(t, Tensor))
