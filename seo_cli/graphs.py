"""``trainer.cuda_graphs``: the training step (forward, loss, backward, clipping, optimizer step)
captured once in a CUDA graph and replayed from then on: one launch per step instead of hundreds, and
no Python between the kernels.

Each shape of batch (a length bucket, an epoch's short last batch) gets its own graph, captured the
first time it comes, up to MAX_GRAPHS. The learning rate becomes a device tensor the scheduler fills in
place. Capture needs warm-up steps on a side stream; they run on the batch and are then undone in place
(weights, optimizer state and the CUDA generator put back), so the run trains on its own steps only.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from seo_cli.errors import UserError
from seo_cli.evaluation import Batch, batch_size_of, move_to
from seo_cli.runtime import autocast

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
MAX_GRAPHS = 32  # captured shapes; a run with more (lengths not padded to a multiple) steps the rest eagerly


@dataclass
class Captured:
    """One captured step: the graph, the static tensors it reads (a window's inputs and labels are copied
    in) and writes (the step's mean loss and the pre-clip gradient norm)."""

    graph: torch.cuda.CUDAGraph
    inputs: Batch
    labels: Batch
    rows: int
    loss: Tensor
    norm: Tensor | None


class StepGraph:
    """Replays a captured step for each window, capturing one graph per shape of window it meets (a
    bucket length, the epoch's short last batch); ``replay`` answers None where the eager step must run,
    and always when ``enabled`` is false, so the loop calls it unconditionally.

    Under ``compile=true`` the compiled model runs inside the captured step: the warm-up steps compile it
    for the new shape, and the graph then replays its kernels with the backward and the optimizer step.
    """

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
        self.graphs: dict[tuple, Captured] = {}
        self.warned = False  # about a shape beyond MAX_GRAPHS

    def replay(self, window: list[tuple[Batch, Batch]]) -> tuple[Tensor, int, Tensor | None] | None:
        """One training step on ``window``: (the sum of its row losses, its rows, the pre-clip norm), or
        None where the eager step must run instead."""
        if not self.enabled or len(window) != 1:
            return None
        shapes = _shapes(window)
        step = self.graphs.get(shapes)
        if step is None and len(self.graphs) < MAX_GRAPHS:
            step = self.graphs[shapes] = self._capture(window)
        if step is None:
            if not self.warned:
                log.warning(
                    "trainer.cuda_graphs: %d shapes of batch captured; further shapes train without a graph "
                    "(set data.pad_to_multiple_of to keep the number of lengths small).",
                    MAX_GRAPHS,
                )
                self.warned = True
            # The last replay's gradients must not add to the eager step's (a replay assigns them afresh).
            self.optimizer.zero_grad(set_to_none=True)
            return None
        inputs, labels = window[0]
        device = step.loss.device
        pytree.tree_map(lambda static, new: static.copy_(new, non_blocking=True), step.inputs, move_to(inputs, device))
        pytree.tree_map(lambda static, new: static.copy_(new, non_blocking=True), step.labels, move_to(labels, device))
        step.graph.replay()
        return step.loss * step.rows, step.rows, None if step.norm is None else step.norm.clone()

    def _step(self, inputs: Batch, labels: Batch, device: torch.device) -> tuple[Tensor, Tensor | None]:
        with autocast(device, self.precision):
            loss = self.loss_fn(self.model(inputs), labels)
        loss.backward()
        norm = self.clip()
        self.optimizer.step()
        return loss.detach().float(), norm

    def _capture(self, window: list[tuple[Batch, Batch]]) -> Captured:
        """Capture the step for ``window``'s shapes after warm-up steps on it, which are then undone.

        Raises:
            UserError: the step could not be captured (a host sync inside the model or the loss).
        """
        model, optimizer = self.model, self.optimizer
        device = next(model.parameters()).device
        inputs, labels = window[0]
        inputs, labels = pytree.tree_map(torch.clone, move_to(inputs, device)), pytree.tree_map(torch.clone, move_to(labels, device))
        for group in optimizer.param_groups:
            if not isinstance(group["lr"], Tensor):  # the graphs captured so far read this very tensor
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
            for p in params
            if p in optimizer.state
        }
        rng = torch.cuda.get_rng_state(device)
        graph = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    self._step(inputs, labels, device)
            torch.cuda.current_stream(device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # captured with no gradients: each replay assigns them
            with torch.cuda.graph(graph):
                loss, norm = self._step(inputs, labels, device)
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
        rows = batch_size_of(labels)
        log.info(
            "trainer.cuda_graphs: the training step is captured for batches of %d rows%s (graph %d).",
            rows,
            f" x {inputs['tokens'].shape[1]} tokens" if isinstance(inputs, dict) and "tokens" in inputs else "",
            len(self.graphs) + 1,
        )
        return Captured(graph, inputs, labels, rows, loss, norm)


def _shapes(window: list) -> tuple:
    """The shapes and dtypes of a window's tensors: what a captured graph is specialised to."""
    leaves, spec = pytree.tree_flatten(window)
    return str(spec), tuple((tuple(t.shape), t.dtype) for t in leaves if isinstance(t, Tensor))
