"""Bootstrap confidence intervals of the headline metrics, resampling the evaluated rows.

The same seeded resamples serve every model evaluated on the same rows, so the difference of two
models' metrics gets its own (paired) interval: if it excludes 0, B is better than A on these rows
beyond resampling noise.

Resample ``r`` is row ``r`` of :func:`resample_indices`. Its metrics depend only on how often it drew
each row, so the resamples are drawn a block of ``CHUNK`` at a time from the one seeded stream (numpy
continues the stream across calls, so the blocks equal the single draw) and turned into per-row counts
``w``; every headline metric is then a sum over the rows weighted by ``w``, for a whole block at once:

- accuracy and macro-F1 from the weighted confusion counts (true, predicted and correct per class)
  and R^2, MAE and RMSE from weighted sums of the errors and targets: one matrix product per block;
- ROC AUC as a weighted rank statistic: per class the rows are sorted once by score, and a resample's
  AUC is the weight of (positive, negative) pairs with the positive ranked higher, ties counting half,
  over the product of the two weights (the Mann-Whitney form of what scikit-learn computes).

Row weights (``data.weight_column``; a rate target's trials) multiply the counts: a resample's metric is
the metric with ``sample_weight = count x weight``, so each target's columns are weighted by its rows'
weights once, and its own weight column gives the resample's total weight in place of its size.

Blocks are scored in forked worker processes while this one draws the next. 1,000 resamples of
1,000,000 rows take about 13 s on 2 cores instead of hours, and equal the per-resample scikit-learn
computation up to float rounding (tests/test_bootstrap.py keeps that computation).
"""

import itertools
import mmap
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

from seo_cli.data.spec import CLASSIFICATION, RATE
from seo_cli.errors import UserError
from seo_cli.metrics import RATE_CLIP

HEADLINE = {
    CLASSIFICATION: ("accuracy", "f1_macro", "roc_auc"),
    "regression": ("r2", "mae", "rmse"),
    RATE: ("log_loss", "brier", "mae"),
}
CHUNK = 128  # resamples per block: their counts of 1,000,000 rows take 128 MB as uint8
# The AUC's rank sums run over tiles of BLOCK x TILE_BLOCKS sorted rows (8,192 at most), whose counts
# in a block of resamples (2 x 2 MB as uint16) stay in the CPU's cache.
BLOCK = 32
TILE_BLOCKS = 256
ROW_TILE = 8_192  # rows per step of the weighted sums: [8,192 x 128] counts as float64 take 8 MB
# Scoring a block takes about 1.5 times as long as drawing it, and the draws are one stream in one
# process: two workers keep up with it, more would wait.
MAX_WORKERS = 2
DENSE_CLASSES = 32  # a classification target with more: its 3 x classes indicator columns are sparse


def resample_indices(num_rows: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, num_rows]`` row indices drawn with replacement: what the resamples are, by definition.

    Materialises ``resamples x num_rows`` integers; :class:`Resamples` draws the same ones block by block.
    """
    return np.random.default_rng(seed).integers(0, num_rows, size=(resamples, num_rows))


@dataclass(frozen=True)
class Resamples:
    """The seeded resamples of ``num_rows`` rows, as blocks of per-row counts (see the module docstring)."""

    num_rows: int
    count: int
    seed: int

    def counts(self, chunk: int = CHUNK, reuse: bool = False) -> Iterator[np.ndarray]:
        """``[chunk, num_rows]`` uint8 blocks: how often each resample drew each row.

        ``reuse``: every block is drawn into the same array (the caller copies what it keeps): fresh
        memory costs the kernel's zeroing of its pages, more than filling the block again.
        A count above 255 would wrap, but a row's count is Binomial(num_rows, 1 / num_rows), about
        Poisson(1): P(count > 255) < 1e-500 per row, at any size.
        """
        rng = np.random.default_rng(self.seed)
        one = np.ones(self.num_rows, dtype=np.uint8)
        kept = np.zeros((min(chunk, self.count), self.num_rows), dtype=np.uint8) if reuse else None
        for start in range(0, self.count, chunk):
            size = min(chunk, self.count - start)
            if kept is None:
                block = np.zeros((size, self.num_rows), dtype=np.uint8)
            else:
                block = kept[:size]
                block.fill(0)
            for row in block:
                # One resample at a time: the same stream as resample_indices. add.at into the uint8 row:
                # no 8 MB of int64 counts to fill and narrow (3.3 ms a resample of 1,000,000 rows, not 4.3).
                np.add.at(row, rng.integers(0, self.num_rows, size=self.num_rows), one)
            yield block


def counts_of(indices: np.ndarray, num_rows: int) -> np.ndarray:
    """``[resamples, num_rows]`` counts of explicit row indices (a test's hand-made resamples)."""
    return np.stack([np.bincount(row, minlength=num_rows) for row in indices]).astype(np.uint8)


def metric_samples(
    predictions: dict[str, tuple],
    counts: Iterable[np.ndarray],
    workers: int = 1,
) -> dict[str, dict[str, np.ndarray]]:
    """Each headline metric of each target on each resample: ``{target: {metric: [resamples]}}``.

    Args:
        predictions: ``{target: (task, y_true, y_pred)}`` or ``(task, y_true, y_pred, weight)``, all of the
            same rows; y_pred holds class probabilities ``[N, K]`` for classification, values ``[N]`` for
            regression, predicted rates ``[N]`` (y_true the observed ones) for a rate; ``weight``: the rows'
            weights (a rate's: its trials times the row weights), None for 1. Several models' targets
            under distinct keys share each block of resamples (the paired comparison).
        counts: blocks ``[resamples, N]`` of per-row counts, e.g. ``Resamples(...).counts()``.
        workers: processes scoring blocks while this one draws the next, at most ``MAX_WORKERS``
            (1: all in this process).
    """
    kinds = {CLASSIFICATION: _ClassificationSums, RATE: _RateSums}
    scorers = {
        name: kinds.get(task, _RegressionSums)(y_true, y_pred, weight)
        for name, (task, y_true, y_pred, weight) in ((n, (*p, None)[:4]) for n, p in predictions.items())
    }
    sums = _WeightedSums(list(scorers.values()))
    # One BLAS thread per product: the blocks run in processes already, and OpenBLAS's own threads
    # made these small products 100x slower on the 2-core machine whenever another process ran.
    with threadpool_limits(limits=1, user_api="blas"):
        blocks = _map_blocks(
            lambda block: _score_block(scorers, sums, block), counts, min(workers, MAX_WORKERS)
        )
    return {
        name: {m: np.concatenate([b[name][m] for b in blocks]) for m in HEADLINE[predictions[name][0]]}
        for name in scorers
    }


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval; NaN resamples (an AUC with one class drawn) are left out."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _map_blocks(
    score: Callable[[np.ndarray], dict], counts: Iterable[np.ndarray], workers: int
) -> list[dict]:
    """``score`` of every block, in order. With workers > 1 (and fork, as on Linux) the blocks are
    scored in that many forked processes while this one draws the next: two threads, sharing the GIL
    among the many short numpy steps of the rank sums, scored 1.4x as fast as one; two processes 1.9x.

    The workers inherit ``score`` and what it holds (the sorted rows, the columns) from the fork,
    without a copy; each block reaches them through one of workers + 1 shared memory slots.
    """
    blocks = iter(counts)
    first = next(blocks, None)
    if first is None:
        return []
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [score(first), *(score(block) for block in blocks)]
    slots = [
        np.frombuffer(mmap.mmap(-1, first.nbytes), dtype=np.uint8).reshape(first.shape)
        for _ in range(workers + 1)
    ]
    futures: list[Future] = []
    context = multiprocessing.get_context("fork")
    try:
        with ProcessPoolExecutor(workers, context, initializer=_adopt, initargs=(score, slots)) as pool:
            for i, block in enumerate(itertools.chain([first], blocks)):
                slot = i % len(slots)
                if i >= len(slots):
                    futures[i - len(slots)].result()  # the slot's last block is scored: its memory is free
                slots[slot][: len(block)] = block
                futures.append(pool.submit(_score_slot, slot, len(block)))
            return [f.result() for f in futures]
    except BrokenProcessPool as err:
        raise UserError(
            "a bootstrap worker process died (killed for memory?); set bootstrap=0, fewer resamples, or "
            "OMP_NUM_THREADS=1 to score them in this process."
        ) from err


_WORKER: dict = {}  # in a forked worker only: the score function and the shared slots it inherited


def _adopt(score: Callable[[np.ndarray], dict], slots: list[np.ndarray]) -> None:
    _WORKER.update(score=score, slots=slots, blas=threadpool_limits(limits=1, user_api="blas"))


def _score_slot(slot: int, rows: int) -> dict:
    return _WORKER["score"](_WORKER["slots"][slot][:rows])


def _score_block(scorers: dict, sums: "_WeightedSums", block: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The metrics of one block of resamples ``[c, N]`` for every target."""
    if block.shape[1] != sums.num_rows:
        raise ValueError(f"counts of {block.shape[1]} rows for predictions of {sums.num_rows}")
    # Row-major counts [N + 1, c] with a zero row last, which padded positions point at: a gather
    # then reads a row's c counts as one piece. The array is kept for the next block (in each worker
    # its own): fresh memory cost the kernel's zeroing of its pages, a sixth of the whole time.
    shape = (sums.num_rows + 1, block.shape[0])
    if sums.scratch is None or sums.scratch.shape != shape:
        sums.scratch = np.empty(shape, dtype=np.uint8)
    counts = sums.scratch
    counts[-1] = 0
    for start in range(0, sums.num_rows, ROW_TILE):
        part = block[:, start : start + ROW_TILE]
        counts[start : start + part.shape[1]] = part.T
    del block
    total, weighted = sums.of(counts)
    # A weighted resample may draw only rows of weight 0: its metrics are NaN, which ``interval`` leaves out.
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            name: scorer.metrics(part, counts, total)
            for (name, scorer), part in zip(scorers.items(), weighted, strict=True)
        }


class _WeightedSums:
    """Every target's per-row columns summed with each resample's counts, in one pass over the rows:
    a float64 matrix product per tile for the dense columns (a ones column first: the resample's
    size), a sparse product for a classification target with many classes."""

    def __init__(self, scorers: list) -> None:
        self.num_rows = scorers[0].num_rows
        self.scratch: np.ndarray | None = None  # the row-major counts of the last block (_score_block)
        widths = [0 if s.sparse else s.width for s in scorers]
        # Column by column (Fortran order): the targets fill whole columns, and the products read row tiles.
        self.dense = np.zeros((self.num_rows, 1 + sum(widths)), order="F")
        self.dense[:, 0] = 1
        self.slices, self.sparse = [], []
        start = 1
        for scorer, width in zip(scorers, widths, strict=True):
            if scorer.sparse:
                matrix = scorer.sparse_columns()
                self.sparse.append([matrix[s : s + ROW_TILE].T for s in range(0, self.num_rows, ROW_TILE)])
                self.slices.append(len(self.sparse) - 1)
            else:
                scorer.fill(self.dense[:, start : start + width])
                self.slices.append(slice(start, start + width))
                start += width

    def of(self, counts: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The resamples' sizes ``[c]`` and ``[width, c]`` weighted sums per scorer, of row-major counts."""
        c = counts.shape[1]
        dense = np.zeros((self.dense.shape[1], c))
        extra = [np.zeros((tiles[0].shape[0], c)) for tiles in self.sparse]
        weights = np.empty((ROW_TILE, c))
        for i, start in enumerate(range(0, self.num_rows, ROW_TILE)):
            stop = min(start + ROW_TILE, self.num_rows)
            w = weights[: stop - start]
            w[...] = counts[start:stop]
            dense += self.dense[start:stop].T @ w
            for tiles, out in zip(self.sparse, extra, strict=True):
                out += tiles[i] @ w
        return dense[0], [extra[s] if isinstance(s, int) else dense[s] for s in self.slices]


def _row_weights(weight: np.ndarray | None, num_rows: int) -> np.ndarray:
    return np.ones(num_rows) if weight is None else np.asarray(weight, dtype=np.float64)


class _RegressionSums:
    """R^2, MAE and RMSE of weighted sums: sum w, sum w e^2, sum w |e|, sum w y and sum w y^2 (w: the
    count times the row's weight)."""

    sparse = False
    width = 5

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray, weight: np.ndarray | None = None) -> None:
        self.y_true, self.y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        self.num_rows = len(self.y_true)
        self.weight = _row_weights(weight, self.num_rows)
        self.weighted = weight is not None

    def fill(self, columns: np.ndarray) -> None:
        error = self.y_pred - self.y_true
        # Centred: keeps the sums of squares well conditioned.
        centred = self.y_true - (np.average(self.y_true, weights=self.weight) if self.weighted else self.y_true.mean())
        for i, column in enumerate((np.ones(self.num_rows), error**2, np.abs(error), centred, centred**2)):
            columns[:, i] = column * self.weight

    def metrics(self, sums: np.ndarray, counts: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray]:
        total, squared, absolute, y, y2 = sums
        ss_tot = y2 - y**2 / total
        # All drawn targets equal: ss_tot is 0, up to the rounding of the two sums.
        ss_tot[ss_tot <= 1e-12 * y2] = np.nan
        return {"r2": 1 - squared / ss_tot, "mae": absolute / total, "rmse": np.sqrt(squared / total)}


class _RateSums:
    """A rate target's log loss, Brier score and MAE (as ``seo_cli.metrics.rate_report``) of weighted sums:
    sum w, sum w x log loss, sum w (p - r)^2 and sum w |p - r| (w: the count times the row's trials and weight)."""

    sparse = False
    width = 4

    def __init__(self, rate: np.ndarray, predicted: np.ndarray, weight: np.ndarray | None = None) -> None:
        self.rate = np.asarray(rate, dtype=np.float64)
        self.predicted = np.clip(np.asarray(predicted, dtype=np.float64), RATE_CLIP, 1 - RATE_CLIP)
        self.num_rows = len(self.rate)
        self.weight = _row_weights(weight, self.num_rows)

    def fill(self, columns: np.ndarray) -> None:
        r, p = self.rate, self.predicted
        log_loss = -(r * np.log(p) + (1 - r) * np.log1p(-p))
        for i, column in enumerate((np.ones(self.num_rows), log_loss, (p - r) ** 2, np.abs(p - r))):
            columns[:, i] = column * self.weight

    def metrics(self, sums: np.ndarray, counts: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray]:
        weight, log_loss, squared, absolute = sums
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample that drew only rows of weight 0: NaN
            return {"log_loss": log_loss / weight, "brier": squared / weight, "mae": absolute / weight}


@dataclass
class _RankPlan:
    """One class's rows sorted once by score, for the weighted rank statistic of :func:`_pairs_below`.

    ``positive`` / ``negative``: per tile, the row at each sorted position if it is a positive / a
    negative, else the zero row ``N``; within a tile position ``b * BLOCK + j`` sits at
    ``j * blocks + b`` ([BLOCK, blocks] layout). ``tie_*``: the rows of the tie groups that hold both
    positives and negatives, in group order, and where each group starts.
    """

    positive: np.ndarray
    negative: np.ndarray
    blocks: int
    tie_positive: np.ndarray
    tie_positive_starts: np.ndarray
    tie_negative: np.ndarray
    tie_negative_starts: np.ndarray


def _rank_plan(score: np.ndarray, is_positive: np.ndarray, rows: np.ndarray, num_rows: int) -> _RankPlan:
    """The plan of ``rows`` (the only rows a resample using it draws), scored by ``score``."""
    order = _score_order(score, is_positive)
    sorted_rows, sorted_positive, sorted_score = rows[order], is_positive[order], score[order]
    blocks = max(1, min(TILE_BLOCKS, -(-len(rows) // BLOCK)))
    tile = BLOCK * blocks
    padded = -(-len(rows) // tile) * tile
    positive = np.full(padded, num_rows, dtype=np.intp)
    negative = np.full(padded, num_rows, dtype=np.intp)
    positive[: len(rows)] = np.where(sorted_positive, sorted_rows, num_rows)
    negative[: len(rows)] = np.where(sorted_positive, num_rows, sorted_rows)

    def layout(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, blocks, BLOCK).transpose(0, 2, 1).reshape(-1, tile).copy()

    group = np.concatenate([[0], np.cumsum(sorted_score[1:] != sorted_score[:-1])])
    with_positive = np.bincount(group[sorted_positive], minlength=group[-1] + 1) > 0
    with_negative = np.bincount(group[~sorted_positive], minlength=group[-1] + 1) > 0
    mixed = (with_positive & with_negative)[group]

    def tie_rows(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picked = mixed & kind
        return sorted_rows[picked], np.flatnonzero(np.diff(group[picked], prepend=-1))

    return _RankPlan(
        layout(positive), layout(negative), blocks, *tie_rows(sorted_positive), *tie_rows(~sorted_positive)
    )


def _score_order(score: np.ndarray, is_positive: np.ndarray) -> np.ndarray:
    """Rows by score, positives first among equal scores. A float32 score's bits, made to sort like
    the float (and -0.0 like 0.0), and the tie-break in one int64 key: one sort, a third of lexsort's."""
    if score.dtype != np.float32:
        return np.lexsort((~is_positive, score))
    bits = (score + np.float32(0)).view(np.uint32).astype(np.int64)
    key = np.where(bits >> 31, 0xFFFFFFFF - bits, bits | 0x80000000)  # negative floats: reversed
    return np.argsort(key << 1 | ~is_positive)


def _pairs_below(
    counts: np.ndarray, plan: _RankPlan, small_counts: bool, row_weight: np.ndarray | None = None
) -> np.ndarray:
    """Per resample (column of ``counts``): the weight of (positive, negative) row pairs with the
    positive scored higher, ties counting half: sum over positives of w x (negative weight below).

    Within a tile the running negative weight of each BLOCK of positions is carried down the BLOCK
    rows of the [BLOCK, blocks, c] layout (BLOCK vector steps); the blocks' totals then carry across
    the tile in float64, and the tiles' totals across the rows. The sums within a block are exact in
    uint16 when no count exceeds 15 (``small_counts``: at most (32 x 15 / 2)^2 = 57,600), else in
    float32 (at most (32 x 255 / 2)^2 < 2^24); uint16 steps take two thirds of float32's time.
    The buffers are made once: allocating them per tile cost as much as the arithmetic.
    ``row_weight`` (``[N + 1]``, 0 last): each count times its row's weight, summed in float64.
    """
    c, blocks = counts.shape[1], plan.blocks
    tile = BLOCK * blocks
    dtype = np.float64 if row_weight is not None else np.uint16 if small_counts else np.float32
    taken = np.empty((2, tile, c), dtype=np.uint8 if row_weight is None else np.float64)
    pos, neg = np.empty((2, BLOCK, blocks, c), dtype=dtype)
    running, within, positive_total, scratch = np.empty((4, blocks, c), dtype=dtype)
    below = np.zeros(c)  # pairs within blocks
    across = np.zeros(c)  # pairs across blocks and tiles
    carried = np.zeros(c)  # negative weight of the tiles before
    for positive_rows, negative_rows in zip(plan.positive, plan.negative, strict=True):
        if row_weight is None:
            np.take(counts, positive_rows, axis=0, out=taken[0])
            np.take(counts, negative_rows, axis=0, out=taken[1])
        else:
            np.multiply(counts[positive_rows], row_weight[positive_rows, None], out=taken[0])
            np.multiply(counts[negative_rows], row_weight[negative_rows, None], out=taken[1])
        pos.reshape(tile, c)[...] = taken[0]
        neg.reshape(tile, c)[...] = taken[1]
        np.copyto(running, neg[0])
        np.copyto(positive_total, pos[0])
        within.fill(0)
        for j in range(1, BLOCK):
            np.multiply(pos[j], running, out=scratch)
            within += scratch
            running += neg[j]
            positive_total += pos[j]
        below += within.sum(axis=0, dtype=np.float64)
        block_negative = running.T.astype(np.float64)  # [c, blocks]
        before = np.cumsum(block_negative, axis=1) - block_negative + carried[:, None]
        across += np.einsum("cb,cb->c", positive_total.T.astype(np.float64), before)
        carried += block_negative.sum(axis=1)
    ties = np.zeros(c)
    if len(plan.tie_positive_starts):
        tie_p, tie_n = counts[plan.tie_positive], counts[plan.tie_negative]
        if row_weight is not None:
            tie_p = tie_p * row_weight[plan.tie_positive, None]
            tie_n = tie_n * row_weight[plan.tie_negative, None]
        kind = np.int32 if row_weight is None else np.float64
        p = np.add.reduceat(tie_p, plan.tie_positive_starts, axis=0, dtype=kind)
        n = np.add.reduceat(tie_n, plan.tie_negative_starts, axis=0, dtype=kind)
        ties = np.einsum("gc,gc->c", p.astype(np.float64), n)
    return below + across + 0.5 * ties


class _ClassificationSums:
    """Accuracy and macro-F1 from weighted confusion counts; ROC AUC from a :class:`_RankPlan` per
    class, one-vs-rest macro over the classes a resample drew, as ``seo_cli.metrics`` computes it
    (with the probabilities renormalised over those classes when some are missing)."""

    def __init__(self, y_true: np.ndarray, proba: np.ndarray, weight: np.ndarray | None = None) -> None:
        self.y_true, self.proba = np.asarray(y_true), proba
        self.num_rows, k = proba.shape
        # The rows' weights with a 0 for the zero row N that padded positions point at; None: all 1.
        self.row_weight = None if weight is None else np.append(np.asarray(weight, dtype=np.float64), 0.0)
        self.width = 3 * k  # per class: true, predicted, right
        self.sparse = k > DENSE_CLASSES
        self.plans: dict[tuple[int, ...], list[tuple[int, _RankPlan]]] = {}
        # The plans of the resamples that draw every class present, made before any worker forks (they
        # inherit them); a resample missing a class, rare beyond tiny data, gets its plans when it comes.
        present = tuple(np.flatnonzero(np.bincount(self.y_true, minlength=k)).tolist())
        if len(present) >= 2:
            self._plans(present)

    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the 1s: each row's true class, k + its predicted class, 2k + its class when right."""
        k = self.proba.shape[1]
        predicted = self.proba.argmax(axis=1)
        right = np.flatnonzero(predicted == self.y_true)
        rows = np.concatenate([np.arange(self.num_rows), np.arange(self.num_rows), right])
        return rows, np.concatenate([self.y_true, k + predicted, 2 * k + self.y_true[right]])

    def fill(self, columns: np.ndarray) -> None:
        """Column by column: the columns are contiguous (Fortran order), a scatter over them was 0.5 s."""
        k = self.proba.shape[1]
        predicted = self.proba.argmax(axis=1)
        for c in range(k):
            true, chosen = self.y_true == c, predicted == c
            columns[:, c], columns[:, k + c], columns[:, 2 * k + c] = true, chosen, true & chosen
        if self.row_weight is not None:
            columns *= self.row_weight[:-1, None]

    def sparse_columns(self) -> sparse.csr_matrix:
        rows, cols = self._cells()
        values = np.ones(len(rows)) if self.row_weight is None else self.row_weight[rows]
        return sparse.csr_matrix((values, (rows, cols)), shape=(self.num_rows, self.width))

    def metrics(self, sums: np.ndarray, counts: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray]:
        k = self.proba.shape[1]
        true, predicted, correct = sums[:k], sums[k : 2 * k], sums[2 * k :]
        denominator = true + predicted
        f1 = np.divide(2 * correct, denominator, out=np.zeros_like(correct), where=denominator > 0)
        # The resample's total weight: each row is true of one class (its size when unweighted).
        return {
            "accuracy": correct.sum(axis=0) / true.sum(axis=0),
            "f1_macro": f1.mean(axis=0),
            "roc_auc": self._roc_auc(counts, true),
        }

    def _roc_auc(self, counts: np.ndarray, true: np.ndarray) -> np.ndarray:
        auc = np.full(counts.shape[1], np.nan)
        small_counts = counts.max() <= 15  # nearly always: P(a count > 15) is about 2e-14 per row
        small_counts = small_counts and self.row_weight is None
        patterns, which = np.unique((true > 0).T, axis=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            present = tuple(np.flatnonzero(pattern).tolist())
            if len(present) < 2:
                continue  # undefined with one class drawn
            columns = np.flatnonzero(which.ravel() == p)
            block = counts if len(columns) == counts.shape[1] else np.ascontiguousarray(counts[:, columns])
            weight = true[:, columns]
            drawn = weight[list(present)].sum(axis=0)
            values = [
                _pairs_below(block, plan, small_counts, self.row_weight)
                / (weight[positive] * (drawn - weight[positive]))
                for positive, plan in self._plans(present)
            ]
            auc[columns] = np.clip(np.mean(values, axis=0), 0.0, 1.0)  # weighted float sums may round past 1
        return auc

    def _plans(self, present: tuple[int, ...]) -> list[tuple[int, _RankPlan]]:
        """(positive class, plan) of each AUC averaged over the resamples that drew the classes ``present``."""
        if present not in self.plans:
            self.plans[present] = self._make_plans(present)
        return self.plans[present]

    def _make_plans(self, present: tuple[int, ...]) -> list[tuple[int, _RankPlan]]:
        k, n = self.proba.shape[1], len(self.y_true)
        if k == 2:
            return [(1, _rank_plan(self.proba[:, 1], self.y_true == 1, np.arange(n), n))]
        if len(present) == k:
            rows, scores = np.arange(n), self.proba
        else:
            # As seo_cli.metrics: the drawn classes' probabilities, renormalised (in the same float32).
            rows = np.flatnonzero(np.isin(self.y_true, present))
            drawn = self.proba[rows][:, list(present)]
            scores = np.zeros((len(rows), k), dtype=drawn.dtype)
            scores[:, list(present)] = drawn / drawn.sum(axis=1, keepdims=True)
        y = self.y_true[rows]
        # Two classes drawn: one AUC, of the second class's score; more: one per class, averaged.
        classes = present[1:] if len(present) == 2 else present
        return [(c, _rank_plan(scores[:, c], y == c, rows, n)) for c in classes]
