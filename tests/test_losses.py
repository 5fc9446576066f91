"""MultiTargetLoss: each term against its formula written out by hand, weighting, and config errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.errors import UserError
from seo_cli.losses import MultiTargetLoss

TARGETS = [Target("intent", CLASSIFICATION), Target("ctr", REGRESSION)]
COUNTS = {"intent": [2, 3, 1]}
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
LABELS = torch.tensor([0, 2, 1, 0])
PRED = torch.tensor([0.0, 1.0, 3.0, -0.5])
TRUE = torch.tensor([0.0, 0.0, 0.0, 0.0])
OUTPUTS = {"intent": LOGITS, "ctr": PRED}
BATCH = {"intent": LABELS, "ctr": TRUE}


def nll_by_hand(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row -log softmax(logits)[y], from the log-sum-exp formula."""
    log_z = logits.exp().sum(dim=1).log()
    return log_z - logits[torch.arange(len(y)), y]


def make_loss(**kwargs) -> MultiTargetLoss:
    return MultiTargetLoss(TARGETS, COUNTS, **kwargs)


def test_cross_entropy_is_mean_negative_log_likelihood():
    term = make_loss().terms(OUTPUTS, BATCH)["intent"]
    assert_close(term, nll_by_hand(LOGITS, LABELS).mean())
    assert_close(term, F.cross_entropy(LOGITS, LABELS))
    assert term.item() == pytest.approx(1.1270059, abs=1e-6)  # pinned


def test_label_smoothing_mixes_in_the_uniform_target():
    eps = 0.1
    term = make_loss(label_smoothing=eps).terms(OUTPUTS, BATCH)["intent"]
    uniform = -F.log_softmax(LOGITS, dim=1).mean(dim=1)  # cross entropy against 1/K per class
    expected = ((1 - eps) * nll_by_hand(LOGITS, LABELS) + eps * uniform).mean()
    assert_close(term, expected)
    assert not math.isclose(term.item(), make_loss().terms(OUTPUTS, BATCH)["intent"].item(), rel_tol=1e-3)


def test_class_weights_null_weighs_every_class_one():
    loss = make_loss(class_weights=None)
    assert_close(loss.class_weight("intent"), torch.ones(3))
    assert "class_weight_0" in loss.state_dict()


def test_class_weights_balanced_is_inverse_frequency():
    loss = make_loss(class_weights="balanced")
    # n_samples / (n_classes * count) = 6 / (3 * [2, 3, 1])
    assert_close(loss.class_weight("intent"), torch.tensor([1.0, 2.0 / 3.0, 2.0]))
    w = loss.class_weight("intent")[LABELS]
    expected = (w * nll_by_hand(LOGITS, LABELS)).sum() / w.sum()
    assert_close(loss.terms(OUTPUTS, BATCH)["intent"], expected)


def test_class_weights_balanced_gives_a_class_absent_from_training_zero():
    loss = MultiTargetLoss(TARGETS, {"intent": [2, 0, 4]}, class_weights="balanced")
    assert_close(loss.class_weight("intent"), torch.tensor([1.0, 0.0, 0.5]))


def test_class_weights_explicit_mapping():
    loss = make_loss(class_weights={"intent": [1.0, 2.0, 3.0]})
    assert_close(loss.class_weight("intent"), torch.tensor([1.0, 2.0, 3.0]))
    w = torch.tensor([1.0, 3.0, 2.0, 1.0])  # the weights of LABELS' classes
    expected = (w * nll_by_hand(LOGITS, LABELS)).sum() / w.sum()
    assert_close(loss.terms(OUTPUTS, BATCH)["intent"], expected)


def test_class_weights_mapping_without_the_target_leaves_it_unweighted():
    targets = [Target("intent", CLASSIFICATION), Target("quality", CLASSIFICATION)]
    loss = MultiTargetLoss(
        targets, {"intent": [1, 1, 1], "quality": [5, 5]}, class_weights={"quality": [1.0, 4.0]}
    )
    assert_close(loss.class_weight("intent"), torch.ones(3))
    assert_close(loss.class_weight("quality"), torch.tensor([1.0, 4.0]))


def test_class_weights_mapping_with_the_wrong_length_is_a_user_error():
    with pytest.raises(
        UserError, match=r"loss.class_weights.intent has 2 weights but target intent has 3 classes"
    ):
        make_loss(class_weights={"intent": [1.0, 2.0]})


def test_class_weights_mapping_naming_no_classification_target_is_a_user_error():
    with pytest.raises(
        UserError, match=r"loss.class_weights names ctr, intnet.*classification targets are intent"
    ):
        make_loss(class_weights={"intnet": [1.0, 2.0, 3.0], "ctr": [1.0]})


def test_class_weights_unknown_word_is_a_user_error():
    with pytest.raises(UserError, match=r"loss.class_weights='inverse' is not understood"):
        make_loss(class_weights="inverse")


@pytest.mark.parametrize("class_weights", [None, {"intent": [1.0, 2.0, 3.0]}])
def test_focal_with_gamma_zero_is_cross_entropy(class_weights):
    focal = make_loss(classification="focal", focal_gamma=0.0, class_weights=class_weights)
    ce = make_loss(class_weights=class_weights)
    assert_close(focal.terms(OUTPUTS, BATCH)["intent"], ce.terms(OUTPUTS, BATCH)["intent"])


def test_focal_scales_each_row_by_one_minus_p_true_to_the_gamma():
    gamma = 2.0
    term = make_loss(classification="focal", focal_gamma=gamma).terms(OUTPUTS, BATCH)["intent"]
    p_true = torch.softmax(LOGITS, dim=1)[torch.arange(4), LABELS]
    assert_close(term, ((1 - p_true) ** gamma * nll_by_hand(LOGITS, LABELS)).mean())


def test_focal_down_weights_easy_rows_more_than_hard_rows():
    easy_logits, easy_y = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])  # p_true ~ 0.96
    hard_logits, hard_y = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0])  # p_true ~ 0.21
    focal, ce = make_loss(classification="focal", focal_gamma=2.0), make_loss()

    def ratio(logits, y):
        outputs, batch = {"intent": logits, "ctr": torch.zeros(1)}, {"intent": y, "ctr": torch.zeros(1)}
        return (focal.terms(outputs, batch)["intent"] / ce.terms(outputs, batch)["intent"]).item()

    p_easy = torch.softmax(easy_logits, 1)[0, 0].item()
    p_hard = torch.softmax(hard_logits, 1)[0, 0].item()
    assert ratio(easy_logits, easy_y) == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert ratio(hard_logits, hard_y) == pytest.approx((1 - p_hard) ** 2, rel=1e-5)
    assert ratio(easy_logits, easy_y) < 0.01 < 0.5 < ratio(hard_logits, hard_y)


@pytest.mark.parametrize(
    ("regression", "kwargs", "expected"),
    [
        ("mse", {}, (0 + 1 + 9 + 0.25) / 4),
        ("l1", {}, (0 + 1 + 3 + 0.5) / 4),
        # Huber: 0.5 e^2 where |e| <= delta, delta (|e| - 0.5 delta) beyond.
        ("huber", {}, (0 + 0.5 + 2.5 + 0.125) / 4),
        ("huber", {"huber_delta": 2.0}, (0 + 0.5 + 4.0 + 0.125) / 4),
    ],
    ids=["mse", "l1", "huber", "huber-delta2"],
)
def test_regression_terms(regression, kwargs, expected):
    term = make_loss(regression=regression, **kwargs).terms(OUTPUTS, BATCH)["ctr"]
    assert term.item() == pytest.approx(expected)


def test_forward_is_the_sum_of_terms_weighted_per_target():
    loss = make_loss(weights={"ctr": 2.5})
    terms = loss.terms(OUTPUTS, BATCH)
    assert set(terms) == {"intent", "ctr"}
    assert_close(terms["intent"], F.cross_entropy(LOGITS, LABELS))
    assert terms["ctr"].item() == pytest.approx(10.25 / 4)  # unweighted: the weight applies in forward only
    assert_close(loss(OUTPUTS, BATCH), terms["intent"] + 2.5 * terms["ctr"])
    assert_close(make_loss()(OUTPUTS, BATCH), terms["intent"] + terms["ctr"])


def test_weights_naming_an_unknown_target_is_a_user_error():
    with pytest.raises(
        UserError, match=r"loss.weights names clicks, which is not a target; the targets are intent, ctr"
    ):
        make_loss(weights={"clicks": 2.0})


def test_unknown_loss_names_are_user_errors():
    with pytest.raises(UserError, match=r"loss.classification='hinge' is not a classification loss"):
        make_loss(classification="hinge")
    with pytest.raises(UserError, match=r"loss.regression='cross_entropy' is not a regression loss"):
        make_loss(regression="cross_entropy")
