"""Losses over the model's output dict: one term per target, summed with per-target weights.

Classification targets use cross entropy (optionally class-weighted and label-smoothed) or focal
loss; multilabel targets binary cross entropy, one sigmoid per label, averaged over rows and labels;
regression targets use MSE, L1 or Huber on standardised values (the preprocessing scales every
regression target to zero mean and unit variance on the training split, so terms are comparable).
Ranking targets (``ranking_loss``) compare only rows of the same group: pairwise RankNet, listwise
ListNet, or LambdaLoss (RankNet's pairs weighted by how much swapping them changes the group's NDCG).
A rate target (clicks out of impressions) uses the binomial likelihood: the binary cross entropy of the
predicted rate (the sigmoid of its output) against the observed rate, weighted by the trials, which is
the binomial negative log-likelihood of the clicks divided by the batch's impressions (up to a constant).

Row weights (``data.weight_column``, the labels' ``WEIGHT_KEY``) make each term the weighted mean of its
rows in the batch, ``sum(w * l) / sum(w)`` (with class weights, ``sum(w * l) / sum(w * class_weight[y])``,
as cross entropy's own mean); a rate target's rows weigh ``w * trials``. A batch whose rows all weigh 0
contributes a loss of 0. Without weights the terms are the plain means of before.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seo_cli.data.spec import CLASSIFICATION, MULTILABEL, RANKING, RATE, TRIALS_KEY, WEIGHT_KEY, Target
from seo_cli.errors import UserError, require

CLASSIFICATION_LOSSES = ("cross_entropy", "focal")
REGRESSION_LOSSES = ("mse", "l1", "huber")
RANKING_LOSSES = ("lambda", "ranknet", "listnet")


class MultiTargetLoss(nn.Module):
    """Weighted sum of one loss term per target.

    Args:
        targets: the dataset's targets (from the call site).
        class_counts: per classification target, the training count of each class (from the call site);
            used by ``class_weights="balanced"``.
        classification: loss of classification targets: cross_entropy | focal.
        regression: loss of regression targets: mse | l1 | huber. (Multilabel targets: binary cross entropy.)
        ranking: loss of ranking targets: lambda | ranknet | listnet (``ranking_loss``).
        label_smoothing: cross-entropy label smoothing, 0-0.2.
        class_weights: null, "balanced" (inverse class frequency), or one list of weights per
            classification target keyed by name, ``{intent: [1, 2, 1, 1]}``.
        focal_gamma: focusing parameter of the focal loss (Lin et al. 2017), 0-5; 0 is cross entropy.
        huber_delta: where Huber switches from quadratic to linear, in standard deviations.
        weights: per-target weight of its term, ``{ctr: 2.0}``; targets not named weigh 1.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        class_counts: dict[str, list[int]],
        classification: str = "cross_entropy",
        regression: str = "mse",
        ranking: str = "lambda",
        label_smoothing: float = 0.0,
        class_weights: str | dict[str, list[float]] | None = None,
        focal_gamma: float = 2.0,
        huber_delta: float = 1.0,
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        require(0 <= label_smoothing < 1, f"loss.label_smoothing={label_smoothing} must be at least 0 and below 1, e.g. 0.1.")
        require(focal_gamma >= 0, f"loss.focal_gamma={focal_gamma} must be 0 or more, e.g. 2.0.")
        require(huber_delta > 0, f"loss.huber_delta={huber_delta} must be positive, e.g. 1.0.")
        if classification not in CLASSIFICATION_LOSSES:
            raise UserError(
                f"loss.classification={classification!r} is not a classification loss; "
                f"use one of {', '.join(CLASSIFICATION_LOSSES)}."
            )
        if regression not in REGRESSION_LOSSES:
            raise UserError(
                f"loss.regression={regression!r} is not a regression loss; use one of {', '.join(REGRESSION_LOSSES)}."
            )
        if ranking not in RANKING_LOSSES:
            raise UserError(f"loss.ranking={ranking!r} is not a ranking loss; use one of {', '.join(RANKING_LOSSES)}.")
        names = [t.name for t in targets]
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise UserError(
                f"loss.weights names {', '.join(unknown)}, which is not a target; the targets are {', '.join(names)}."
            )
        if class_weights is not None and not isinstance(class_weights, str):
            # A mapping keyed by a misspelt name would otherwise train unweighted without a word.
            classified = [t.name for t in targets if t.type == CLASSIFICATION]
            unknown = sorted(set(class_weights) - set(classified))
            if unknown:
                raise UserError(
                    f"loss.class_weights names {', '.join(unknown)}, which is not a classification target; "
                    f"the classification targets are {', '.join(classified) or 'none'}."
                )
        self.targets = list(targets)
        self.classification = classification
        self.regression = regression
        self.ranking = ranking
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        self.huber_delta = huber_delta
        self.weights = {name: float(weights.get(name, 1.0)) for name in names}
        # Class weights are buffers so they follow the module to the device and into state_dict.
        # Buffers are named by position: a target name may hold a dot, which buffer names cannot.
        for i, target in enumerate(self.targets):
            if target.type == CLASSIFICATION:
                counts = class_counts[target.name]
                self.register_buffer(f"class_weight_{i}", _class_weights(class_weights, target, counts))
        # Cross entropy without a weight when all are 1: the same loss, fewer kernels per step.
        self.unweighted = {
            t.name: bool((self.class_weight(t.name) == 1).all()) for t in self.targets if t.type == CLASSIFICATION
        }

    def class_weight(self, name: str) -> Tensor:
        """The per-class weights of classification target ``name``."""
        return getattr(self, f"class_weight_{[t.name for t in self.targets].index(name)}")

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        total = None  # a weight of 1 and the first term add no kernel: the step launches fewer
        for name, term in self.terms(outputs, targets).items():
            weighted = term if self.weights[name] == 1.0 else self.weights[name] * term
            total = weighted if total is None else total + weighted
        return total

    def terms(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss of each target (before the per-target weights), as device tensors."""
        terms = {}
        row_weight, trials = targets.get(WEIGHT_KEY), targets.get(TRIALS_KEY)
        for target in self.targets:
            out, y = outputs[target.name], targets[target.name]
            if target.type == RANKING:
                # y: int64 [rows, 2], the relevance and the row's group code (seo_cli.data.preprocess).
                terms[target.name] = ranking_loss(out.float(), y[:, 0].float(), y[:, 1], self.ranking)
            elif target.type == CLASSIFICATION:
                weight = None if self.unweighted[target.name] else self.class_weight(target.name)
                terms[target.name] = self._classification_term(out, y, weight, row_weight)
            elif target.type == MULTILABEL:  # the mean over labels, then over rows (weighted by row)
                per_row = F.binary_cross_entropy_with_logits(out.float().reshape(y.shape), y, reduction="none").mean(dim=1)
                terms[target.name] = per_row.mean() if row_weight is None else weighted_mean(per_row, row_weight)
            elif target.type == RATE:
                per_row = F.binary_cross_entropy_with_logits(out.float(), y, reduction="none")
                terms[target.name] = weighted_mean(per_row, trials if row_weight is None else row_weight * trials)
            elif row_weight is not None:
                terms[target.name] = weighted_mean(self._regression_rows(out.float(), y), row_weight)
            elif self.regression == "mse":
                terms[target.name] = F.mse_loss(out.float(), y)
            elif self.regression == "l1":
                terms[target.name] = F.l1_loss(out.float(), y)
            else:
                terms[target.name] = F.huber_loss(out.float(), y, delta=self.huber_delta)
        return terms

    def _regression_rows(self, out: Tensor, y: Tensor) -> Tensor:
        if self.regression == "mse":
            return F.mse_loss(out, y, reduction="none")
        if self.regression == "l1":
            return F.l1_loss(out, y, reduction="none")
        return F.huber_loss(out, y, delta=self.huber_delta, reduction="none")

    def _classification_term(
        self, logits: Tensor, y: Tensor, class_weight: Tensor | None, row_weight: Tensor | None = None
    ) -> Tensor:
        logits = logits.float()
        if self.classification == "cross_entropy":
            if row_weight is None:
                return F.cross_entropy(logits, y, weight=class_weight, label_smoothing=self.label_smoothing)
            per_row = F.cross_entropy(
                logits, y, weight=class_weight, label_smoothing=self.label_smoothing, reduction="none"
            )  # already times class_weight[y]: the mean divides by the weights' sum
            mass = row_weight if class_weight is None else row_weight * class_weight[y]
            return weighted_mean(per_row, row_weight, mass)
        # Focal loss: cross entropy scaled by (1 - p_true)^gamma, class-weighted like cross entropy.
        log_p = F.log_softmax(logits, dim=-1).gather(1, y.unsqueeze(1)).squeeze(1)
        w = class_weight[y] if class_weight is not None else torch.ones_like(log_p)
        if row_weight is not None:
            w = w * row_weight
            return weighted_mean(-((1 - log_p.exp()) ** self.focal_gamma) * log_p, w)
        focal = -((1 - log_p.exp()) ** self.focal_gamma) * log_p * w
        return focal.sum() / w.sum()


def weighted_mean(values: Tensor, weights: Tensor, mass: Tensor | None = None) -> Tensor:
    """``sum(weights * values) / sum(mass)`` (``mass``: the weights themselves unless given); 0 when that sum
    is 0, without a host sync and without a NaN gradient (the denominator becomes 1 there, the numerator is 0)."""
    total = (weights if mass is None else mass).sum()
    return (weights * values).sum() / (total + (total == 0))


def _class_weights(spec: str | dict[str, list[float]] | None, target: Target, counts: list[int]) -> Tensor:
    if spec is None:
        return torch.ones(len(counts))
    if spec == "balanced":
        # sklearn's "balanced": n_samples / (n_classes * count); a class absent from training weighs 0.
        counts_t = torch.tensor(counts, dtype=torch.float32)
        return torch.where(counts_t > 0, counts_t.sum() / (len(counts) * counts_t.clamp(min=1)), 0.0)
    if isinstance(spec, str):
        raise UserError(
            f"loss.class_weights={spec!r} is not understood; use null, balanced, or a mapping "
            f"like {{{target.name}: [1.0, 2.0, ...]}}."
        )
    if target.name not in spec:
        return torch.ones(len(counts))
    values = list(spec[target.name])
    if len(values) != len(counts):
        raise UserError(
            f"loss.class_weights.{target.name} has {len(values)} weights but target {target.name} has "
            f"{len(counts)} classes; give one weight per class in the order of the class names."
        )
    return torch.tensor(values, dtype=torch.float32)


DENSE_ROWS = 4096  # rows whose [rows, rows] pair matrices are built at once (64 MB of float32 each)


def ranking_loss(scores: Tensor, relevance: Tensor, groups: Tensor, kind: str = "lambda") -> Tensor:
    """The mean over groups of each group's ranking loss; only rows of the same group are compared.

    Groups whose rows all have the same relevance (one-row groups among them) carry no order to learn
    and are left out; with none left the loss is 0 (and so is its gradient).

    - ranknet: the mean over the group's pairs with relevance_i > relevance_j of log(1 + exp(s_j - s_i))
      (Burges et al. 2005).
    - listnet: the cross entropy between softmax(relevance) and softmax(scores) over the group's rows,
      the top-one probabilities of Cao et al. 2007.
    - lambda: the sum over those pairs of |ΔNDCG_ij| log(1 + exp(s_j - s_i)), where |ΔNDCG_ij| =
      |rel_i - rel_j| |1/log2(1 + rank_i) - 1/log2(1 + rank_j)| / IDCG is the change of the group's NDCG
      (gain = relevance, as ``ndcg_score``) if the two rows swapped places in the current ranking
      (LambdaRank's weights, Burges 2010; the NDCG-Loss2 family of Wang et al. 2018). The weights take no
      gradient.

    Up to DENSE_ROWS rows are compared with [rows, rows] masks (no host synchronisation: the training
    step); more (a whole evaluation split) are cut into chunks of whole groups first.
    """
    if len(scores) <= DENSE_ROWS:
        total, count = _ranking_sums(scores, relevance, groups, kind)
        return total / count.clamp(min=1)
    order = torch.argsort(groups, stable=True)
    bounds = torch.unique_consecutive(groups[order], return_counts=True)[1].cumsum(0).tolist()
    total = count = scores.new_zeros(())
    start, end = 0, 0
    for stop in bounds:  # a chunk ends at a group boundary once it is full (a bigger group is one chunk)
        if stop - start > DENSE_ROWS and end > start:
            rows = order[start:end]
            chunk_total, chunk_count = _ranking_sums(scores[rows], relevance[rows], groups[rows], kind)
            total, count, start = total + chunk_total, count + chunk_count, end
        end = stop
    rows = order[start:end]
    chunk_total, chunk_count = _ranking_sums(scores[rows], relevance[rows], groups[rows], kind)
    return (total + chunk_total) / (count + chunk_count).clamp(min=1)


def _ranking_sums(scores: Tensor, relevance: Tensor, groups: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(sum over the groups with an order to learn of their loss, how many such groups), on the device."""
    same = groups[:, None] == groups[None, :]
    better = same & (relevance[:, None] > relevance[None, :])  # [i, j]: i should rank above j
    size = same.sum(1).float()  # each row's group size
    ordered = better.any(1) | better.any(0)  # rows of groups with two relevance levels
    groups_counted = (ordered.float() / size).sum()
    if kind == "listnet":
        target = relevance - _group_logsumexp(relevance, same)  # log softmax within the group
        predicted = scores - _group_logsumexp(scores, same)
        return -(ordered * target.exp() * predicted).sum(), groups_counted
    pair_loss = F.softplus(scores[None, :] - scores[:, None])  # [i, j]: log(1 + exp(s_j - s_i))
    if kind == "ranknet":
        pairs = better.sum(1).float()
        group_pairs = same.float() @ pairs  # each row's group's pair count
        per_row = (pair_loss * better).sum(1) / group_pairs.clamp(min=1)
        return per_row.sum(), groups_counted
    with torch.no_grad():
        index = torch.arange(len(scores), device=scores.device)
        earlier = index[None, :] < index[:, None]  # [i, j]: j comes before i among equals
        rank = 1 + (same & ((scores[None, :] > scores[:, None]) | ((scores[None, :] == scores[:, None]) & earlier))).sum(1)
        ideal = 1 + (same & ((relevance[None, :] > relevance[:, None]) | ((relevance[None, :] == relevance[:, None]) & earlier))).sum(1)
        discount = 1.0 / torch.log2(1.0 + rank.float())
        ideal_dcg = same.float() @ (relevance / torch.log2(1.0 + ideal.float()))  # each row's group's IDCG
        delta = (relevance[:, None] - relevance[None, :]).abs() * (discount[:, None] - discount[None, :]).abs()
        weight = better * delta / ideal_dcg.clamp(min=1e-12)[:, None]
    return (weight * pair_loss).sum(), groups_counted


def _group_logsumexp(values: Tensor, same: Tensor) -> Tensor:
    """Per row, log(sum(exp(values))) over the rows of its group (``same``: the [rows, rows] same-group mask)."""
    return torch.logsumexp(values[None, :].expand(len(values), -1).masked_fill(~same, float("-inf")), dim=1)
