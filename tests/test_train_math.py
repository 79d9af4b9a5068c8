"""The pure math of pipeline.train on hand-computed cases: methods, losses, metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

from pipeline.registry import UnknownNameError
from pipeline.train import LOSSES, build_loss, get_task
from pipeline.train.methods import (
    distribution_alignment,
    fixmatch_loss,
    linear_rampup,
    mixmatch_loss,
    mixup,
    pseudo_label_accuracy,
    sharpen,
)
from pipeline.train.metrics import choose_threshold, classification_metrics
from pipeline.train.tasks import class_priors

LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------- FixMatch


def _fixmatch_case():
    logits_x = torch.zeros(1, 2, requires_grad=True)
    y = torch.tensor([0])
    # row 0: P = (0.96, 0.04) passes 0.95; row 1: P = (0.5, 0.5) does not
    weak = torch.tensor([[math.log(0.96), math.log(0.04)], [0.0, 0.0]], requires_grad=True)
    strong = torch.zeros(2, 2, requires_grad=True)
    return logits_x, y, weak, strong


def test_fixmatch_loss_hand_computed():
    logits_x, y, weak, strong = _fixmatch_case()
    loss, mon = fixmatch_loss(logits_x, y, weak, strong, threshold=0.95, lambda_u=2.0)
    # l_x = log 2; l_u = (log 2 * 1 + log 2 * 0) / 2
    assert float(loss.detach()) == pytest.approx(LOG2 + 2.0 * LOG2 / 2)
    assert float(mon["loss_x"]) == pytest.approx(LOG2)
    assert float(mon["loss_u"]) == pytest.approx(LOG2 / 2)
    assert float(mon["mask_rate"]) == pytest.approx(0.5)
    assert math.isnan(float(mon["pseudo_acc"]))  # no true labels given
    loss.backward()
    assert weak.grad is None  # the weak view is a constant target
    assert strong.grad is not None and logits_x.grad is not None


@pytest.mark.parametrize(
    ("y_u", "expected"),
    [([0, 1], 1.0), ([1, -1], 0.0), ([-1, 0], float("nan"))],
)
def test_fixmatch_pseudo_label_accuracy_counts_masked_known_labels(y_u, expected):
    logits_x, y, weak, strong = _fixmatch_case()
    _, mon = fixmatch_loss(logits_x, y, weak, strong, 0.95, 1.0, y_u=torch.tensor(y_u))
    got = float(mon["pseudo_acc"])
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_fixmatch_mask_rate_moves_with_threshold():
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(256, 3, generator=g) * 2
    strong = torch.randn(256, 3, generator=g)
    x, y = torch.zeros(1, 3), torch.tensor([0])
    rates = [
        float(fixmatch_loss(x, y, weak, strong, t, 1.0)[1]["mask_rate"])
        for t in (0.0, 0.5, 0.8, 0.95, 1.0)
    ]
    assert rates[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[1] > rates[3] > rates[4]
    max_p = torch.softmax(weak, 1).max(1).values
    assert rates[2] == pytest.approx(float((max_p >= 0.8).float().mean()))


def test_fixmatch_threshold_is_inclusive():
    weak = torch.tensor([[math.log(0.75), math.log(0.25)]])
    _, mon = fixmatch_loss(torch.zeros(1, 2), torch.tensor([0]), weak, torch.zeros(1, 2), 0.75, 1.0)
    assert float(mon["mask_rate"]) == 1.0


def test_distribution_alignment_hand_computed():
    q = distribution_alignment(
        torch.tensor([[0.5, 0.5]]), torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    )
    # (0.25 / 0.8, 0.25 / 0.2) = (0.3125, 1.25) -> normalised (0.2, 0.8)
    assert torch.allclose(q, torch.tensor([[0.2, 0.8]]))


def test_fixmatch_with_alignment_changes_pseudo_labels():
    weak = torch.tensor([[0.2, 0.0]])  # slightly favours class 0
    args = (torch.zeros(1, 2), torch.tensor([0]), weak, torch.zeros(1, 2), 0.0, 1.0)
    _, plain = fixmatch_loss(*args, y_u=torch.tensor([0]))
    _, aligned = fixmatch_loss(
        *args,
        p_model=torch.tensor([0.9, 0.1]),
        p_target=torch.tensor([0.5, 0.5]),
        y_u=torch.tensor([0]),
    )
    assert float(plain["pseudo_acc"]) == 1.0
    assert float(aligned["pseudo_acc"]) == 0.0  # aligned guess flips to the under-predicted class


def test_pseudo_label_accuracy_without_mask():
    acc = pseudo_label_accuracy(torch.tensor([0, 1, 2]), torch.tensor([0, 2, -1]))
    assert float(acc) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- MixMatch


def test_sharpen_hand_computed():
    p = sharpen(torch.tensor([[0.6, 0.4]]), T=0.5)
    assert torch.allclose(p, torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))
    assert torch.allclose(sharpen(torch.tensor([[0.6, 0.4]]), T=1.0), torch.tensor([[0.6, 0.4]]))


def test_mixup_hand_computed():
    x = torch.tensor([[1.0], [0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, mp = mixup(x, p, 0.75, torch.tensor([1, 0]))
    assert torch.allclose(mx, torch.tensor([[0.75], [0.25]]))
    assert torch.allclose(mp, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


@pytest.mark.parametrize(
    ("progress", "length", "expected"), [(0, 16, 0.0), (8, 16, 0.5), (20, 16, 1.0), (5, 0, 1.0)]
)
def test_linear_rampup(progress, length, expected):
    assert linear_rampup(progress, length) == pytest.approx(expected)


def test_mixmatch_loss_hand_computed():
    logits_x = torch.zeros(1, 2)
    targets_x = torch.tensor([[1.0, 0.0]])
    logits_u = torch.zeros(1, 2)  # softmax (0.5, 0.5)
    targets_u = torch.tensor([[1.0, 0.0]])  # squared error 0.25 per class
    loss, mon = mixmatch_loss(logits_x, targets_x, logits_u, targets_u, lambda_u=100.0, rampup=0.5)
    assert float(mon["loss_u"]) == pytest.approx(0.25)
    assert float(loss) == pytest.approx(LOG2 + 100.0 * 0.5 * 0.25)
    assert float(mon["rampup"]) == 0.5


# ----------------------------------------------------------------------------- losses

COUNTS = torch.tensor([90.0, 10.0])


def _batch(seed: int = 0, n: int = 16, c: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_accepts_hard_and_soft_targets_alike(name):
    logits, y = _batch()
    loss = build_loss(name, COUNTS)
    hard = loss(logits, y)
    soft = loss(logits, F.one_hot(y, 2).float())
    assert torch.isfinite(hard) and float(hard) > 0
    assert float(hard) == pytest.approx(float(soft), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_lower_for_correct_confident_logits(name):
    y = torch.tensor([0, 1, 0, 1])
    good = F.one_hot(y, 2).float() * 6 - 3
    loss = build_loss(name, COUNTS)
    assert float(loss(good, y)) < float(loss(-good, y))


def test_ce_and_weighted_ce_match_torch():
    logits, y = _batch()
    assert float(build_loss("ce", COUNTS)(logits, y)) == pytest.approx(
        float(F.cross_entropy(logits, y))
    )
    w = torch.tensor([100 / (2 * 90), 100 / (2 * 10)])
    assert float(build_loss("weighted_ce", COUNTS)(logits, y)) == pytest.approx(
        float(F.cross_entropy(logits, y, weight=w)), rel=1e-5
    )


def test_class_balanced_weights_follow_effective_numbers():
    logits, y = _batch()
    beta = 0.99
    eff = np.array([(1 - beta) / (1 - beta**90), (1 - beta) / (1 - beta**10)])
    w = torch.tensor(eff * 2 / eff.sum(), dtype=torch.float32)
    got = build_loss("class_balanced", COUNTS, cb_beta=beta)(logits, y)
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, y, weight=w)), rel=1e-5)


def test_focal_hand_computed():
    loss = build_loss("focal", COUNTS, focal_gamma=2.0)
    assert float(loss(torch.zeros(1, 2), torch.tensor([0]))) == pytest.approx(0.25 * LOG2)
    logits, y = _batch()
    no_focus = build_loss("focal", COUNTS, focal_gamma=0.0)
    assert float(no_focus(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_logit_adjusted_adds_log_priors_and_wants_zero_bias():
    logits, y = _batch()
    loss = build_loss("logit_adjusted", COUNTS)
    expected = F.cross_entropy(logits + torch.log(class_priors(COUNTS)), y)
    assert float(loss(logits, y)) == pytest.approx(float(expected), rel=1e-5)
    assert loss.prior_bias is False
    assert build_loss("ce", COUNTS).prior_bias is True


def test_ldam_margins_hand_computed():
    counts = torch.tensor([81.0, 1.0])  # n^-1/4 = (1/3, 1) -> margins (0.5/3, 0.5)
    logits, y = _batch()
    m = torch.tensor([0.5 / 3, 0.5])
    expected = F.cross_entropy(logits - F.one_hot(y, 2) * m, y)
    assert float(build_loss("ldam", counts)(logits, y)) == pytest.approx(float(expected), rel=1e-5)


def test_unknown_loss_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'focal'"):
        build_loss("focall", COUNTS)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("metric", "expected"), [("f2", 0.3), ("f1", 0.3), ("balanced_accuracy", 0.9)]
)
def test_choose_threshold_hand_computed(metric, expected):
    scores = torch.tensor([0.9, 0.8, 0.3, 0.2])
    positives = torch.tensor([True, False, True, False])
    # F2 at 0.9, 0.8, 0.3, 0.2 = 5/9, 1/2, 10/11, 5/6; balanced accuracy ties 0.9 and 0.3
    assert choose_threshold(scores, positives, metric) == pytest.approx(expected)


def test_choose_threshold_without_both_classes():
    assert choose_threshold(torch.tensor([0.1, 0.7]), torch.tensor([True, True])) == 0.5


def _random_probs(n: int, c: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), 1)
    return probs, torch.tensor(y)


def test_binary_metrics_match_sklearn():
    task = get_task("binary")
    probs, y = _random_probs(200, 2, 0)
    m = classification_metrics(probs, y, task=task)
    score = probs[:, 1].numpy()
    assert m["auroc"] == pytest.approx(roc_auc_score(y, score), abs=1e-6)
    assert m["ap"] == pytest.approx(average_precision_score(y, score), abs=1e-6)
    pred = (score >= m["threshold"]).astype(int)
    tp = int(((pred == 1) & (y.numpy() == 1)).sum())
    assert m["sensitivity"] == pytest.approx(tp / int(y.sum()))
    assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
    # the chosen threshold maximises F2 among all candidate thresholds
    best = max(
        classification_metrics(probs, y, task=task, threshold=float(t))["f2"]
        for t in np.unique(score)
    )
    assert m["f2"] == pytest.approx(best)


def test_schatzker_metrics_match_sklearn():
    task = get_task("schatzker")
    probs, y = _random_probs(300, 7, 1)
    m = classification_metrics(probs, y, task=task)
    pred = probs.argmax(1).numpy()
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-5)
    assert m["auroc"] == pytest.approx(roc_auc_score(y > 0, 1 - probs[:, 0].numpy()), abs=1e-6)


def test_given_threshold_is_used_unchanged():
    probs, y = _random_probs(100, 2, 2)
    m = classification_metrics(probs, y, task=get_task("binary"), threshold=0.123)
    assert m["threshold"] == 0.123
    pred = probs[:, 1] >= 0.123
    assert m["sensitivity"] == pytest.approx(float(pred[y == 1].float().mean()))


def test_ece_hand_computed():
    task = get_task("binary")
    probs = torch.tensor([[0.8, 0.2]]).repeat(10, 1)
    calibrated = torch.tensor([0] * 8 + [1] * 2)
    assert classification_metrics(probs, calibrated, task=task)["ece"] == pytest.approx(
        0.0, abs=1e-6
    )
    overconfident_wrong = torch.tensor([0] * 5 + [1] * 5)
    assert classification_metrics(probs, overconfident_wrong, task=task)["ece"] == pytest.approx(
        0.3, abs=1e-6
    )


def test_single_class_validation_gives_nan_auroc():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    m = classification_metrics(probs, torch.tensor([0, 0]), task=get_task("binary"))
    assert math.isnan(m["auroc"]) and m["threshold"] == 0.5


# ----------------------------------------------------------------------------- method state


@pytest.mark.parametrize("name", ["fixmatch", "mixmatch"])
def test_distribution_alignment_state_survives_a_round_trip(name):
    """The running p_model is the method's only state: a resumed run must continue it."""
    from pipeline.train.losses import CrossEntropy
    from pipeline.train.methods import METHODS, StepContext

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    prior = torch.tensor([0.8, 0.2])
    params = {
        "num_classes": 2,
        "prior": prior,
        "dist_align": True,
        "mu": 2,
        "pseudo_label_threshold": 0.5,
    }
    method = METHODS.get(name)(**params)

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        return {
            "x": torch.rand(4, 1, 8, 8, generator=g),
            "y": torch.tensor([0, 1, 0, 0]),
            "u": torch.rand(8, 1, 8, 8, generator=g),
        }

    def ctx(seed):
        return StepContext(
            net,
            CrossEntropy(torch.tensor([8.0, 2.0])),
            torch.Generator().manual_seed(seed),
            np.random.default_rng(seed),
            1.0,
        )

    for s in range(3):
        method.step(ctx(s), batch(s))
    state = method.state_dict()
    assert not torch.allclose(state["p_model"], torch.full((2,), 0.5))
    resumed = METHODS.get(name)(**params)
    resumed.load_state_dict(state)
    a, _ = method.step(ctx(9), batch(9))
    b, _ = resumed.step(ctx(9), batch(9))
    assert float(a.detach()) == float(b.detach())
    assert torch.equal(method.state_dict()["p_model"], resumed.state_dict()["p_model"])


def test_type_decisions_hand_computed():
    from pipeline.train.metrics import type_predictions

    probs = torch.tensor(
        [
            [0.50, 0.04, 0.30, 0.05, 0.04, 0.04, 0.03],  # argmax "none"; P(fracture) 0.5
            [0.80, 0.02, 0.10, 0.02, 0.02, 0.02, 0.02],  # P(fracture) 0.2: below threshold
            [0.10, 0.25, 0.30, 0.05, 0.10, 0.10, 0.10],  # type II, or I once priors count
        ]
    )
    prior = torch.tensor([0.4, 0.05, 0.3, 0.1, 0.1, 0.025, 0.025])
    kw = {"threshold": 0.4, "prior": prior}
    assert type_predictions(probs, decision="argmax", **kw).tolist() == [0, 0, 2]
    assert type_predictions(probs, decision="threshold", **kw).tolist() == [2, 0, 2]
    # P(type) / prior: row 0 I 0.8, II 1.0, III 0.5, IV 0.4, V 1.6, VI 1.2 -> V;
    # row 2 I 5.0, II 1.0, III 0.5, IV 1.0, V 4.0, VI 4.0 -> I
    assert type_predictions(probs, decision="balanced", **kw).tolist() == [5, 0, 1]
    # without a prior "balanced" is "threshold"
    assert torch.equal(
        type_predictions(probs, decision="balanced", threshold=0.4),
        type_predictions(probs, decision="threshold", threshold=0.4),
    )
    with pytest.raises(UnknownNameError, match="argmax"):
        type_predictions(probs, decision="argmx", threshold=0.4)


@pytest.mark.parametrize("decision", ["threshold", "balanced"])
def test_schatzker_metrics_follow_the_type_decision(decision):
    from pipeline.train.metrics import type_predictions

    task = get_task("schatzker")
    probs, y = _random_probs(300, 7, 3)
    prior = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05])
    m = classification_metrics(probs, y, task=task, type_decision=decision, type_prior=prior)
    pred = type_predictions(probs, threshold=m["threshold"], decision=decision, prior=prior)
    pred = pred.numpy()
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-5)
    # fracture-level figures do not depend on the type decision
    plain = classification_metrics(probs, y, task=task)
    assert (m["auroc"], m["f2"], m["threshold"]) == (
        plain["auroc"],
        plain["f2"],
        plain["threshold"],
    )
    # the fracture call of a "threshold"/"balanced" type decision is the threshold's
    assert ((pred > 0) == (1 - probs[:, 0] >= m["threshold"]).numpy()).all()
