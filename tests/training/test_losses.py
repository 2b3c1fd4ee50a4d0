"""Each loss against arithmetic done by hand on 2-4 item examples (K = 3 bins at 1, 3, 5), plus gradients."""

import math

import pytest
import torch

from deramos_rt.errors import DeramosError
from training.config import LossConfig
from training.losses import balr, ce_gauss, gaussian_targets, l1, pamr, sama, total_loss

C3 = torch.tensor([1.0, 3.0, 5.0])
# sigma = 1, y = 3: weights exp(-(3-1)^2/2), exp(0), exp(-(3-5)^2/2) = e^-2, 1, e^-2; normalised.
Q3 = [math.exp(-2) / (1 + 2 * math.exp(-2)), 1 / (1 + 2 * math.exp(-2)), math.exp(-2) / (1 + 2 * math.exp(-2))]


def test_gaussian_targets_by_hand_with_clamping():
    q = gaussian_targets(torch.tensor([3.0, 9.0, 0.0]), C3, sigma=1.0)
    assert q[0].tolist() == pytest.approx([0.1065070, 0.7869860, 0.1065070], abs=1e-6)
    assert q[0].tolist() == pytest.approx(Q3, abs=1e-7)
    # y = 9 -> 5: e^-8, e^-2, 1 (normalised); y = 0 -> 1: the mirror image.
    w = [math.exp(-8), math.exp(-2), 1.0]
    assert q[1].tolist() == pytest.approx([v / sum(w) for v in w], abs=1e-7)
    assert q[2].tolist() == pytest.approx([v / sum(w) for v in reversed(w)], abs=1e-7)
    wide = gaussian_targets(torch.tensor([2.3]), torch.linspace(1, 5, 20))  # default sigma 0.25
    assert wide.sum().item() == pytest.approx(1.0) and int(wide.argmax()) == 6  # c_6 = 1 + 6 * 4/19 = 2.263
    with pytest.raises(DeramosError, match="sigma"):
        gaussian_targets(torch.tensor([3.0]), C3, sigma=0.0)


def test_ce_gauss_by_hand_batch_mean_and_default_centres():
    p = torch.tensor([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    y = torch.tensor([3.0, 3.0])
    # Row 1: sum_k q_k (ln q_k - ln(p_k + 1e-10)), q = Q3.
    row1 = sum(qk * (math.log(qk) - math.log(pk + 1e-10)) for qk, pk in zip(Q3, [0.2, 0.5, 0.3]))
    assert row1 == pytest.approx(0.1795724, abs=1e-6)
    # Row 2: zeros in p cost ln(1e-10) = -23.0259 instead of -inf.
    row2 = 2 * Q3[0] * (math.log(Q3[0]) + 23.02585093) + Q3[1] * math.log(Q3[1])
    assert row2 == pytest.approx(4.2392550, abs=1e-6)
    loss = ce_gauss(p, y, sigma=1.0, bin_centers=C3)
    assert loss.item() == pytest.approx((row1 + row2) / 2, rel=1e-5)
    # Default centres are linspace(1, 5, K), which for K = 3 is C3.
    assert ce_gauss(p, y, sigma=1.0).item() == pytest.approx(loss.item(), rel=1e-6)
    assert ce_gauss(torch.tensor([Q3]), torch.tensor([3.0]), 1.0, C3).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DeramosError, match="bins"):
        ce_gauss(p, y, 1.0, torch.linspace(1, 5, 20))


def test_ce_gauss_has_cross_entropy_gradient_and_is_finite_at_zero_probabilities():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-40.0, 30.0, -40.0]], requires_grad=True)  # row 2 underflows
    y = torch.tensor([1.6, 4.2])
    ce_gauss(torch.softmax(logits, -1), y, 0.5, C3).backward()
    kl_grad = logits.grad.clone()
    logits.grad = None
    q = gaussian_targets(y, C3, 0.5)
    cross_entropy = -(q * torch.log(torch.softmax(logits, -1) + 1e-10)).sum(-1).mean()
    cross_entropy.backward()
    assert torch.isfinite(kl_grad).all()
    assert torch.allclose(kl_grad, logits.grad, atol=1e-7)
    # KL = cross-entropy - entropy(q): they differ by a constant.
    entropy = -(q * q.log()).sum(-1).mean()
    assert ce_gauss(torch.softmax(logits, -1), y, 0.5, C3).item() == pytest.approx(
        (cross_entropy - entropy).item(), rel=1e-5)


def test_balr_by_hand_sum_not_mean_and_target_detached():
    y = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y_hat = torch.tensor([3.0, 1.0, 2.0], requires_grad=True)
    # P = softmax(1, 2, 3) = [0.09003, 0.24473, 0.66524]; log Q = (3, 1, 2) - ln(e^3 + e^1 + e^2) = (3, 1, 2) - 3.40761
    P = [0.0900306, 0.2447285, 0.6652410]
    log_q = [3 - 3.4076060, 1 - 3.4076060, 2 - 3.4076060]
    loss = balr(y_hat, y)
    assert loss.item() == pytest.approx(-sum(p * lq for p, lq in zip(P, log_q)), abs=1e-5)  # 1.56230
    loss.backward()
    assert y.grad is None  # the target is detached
    q = [math.exp(v) for v in log_q]
    assert y_hat.grad.tolist() == pytest.approx([qi - pi for qi, pi in zip(q, P)], abs=1e-5)  # dL/dy_hat = Q - P
    # A sum over the list: an uninformative prediction on 3 items costs ln 3 (a mean would give ln 3 / 3).
    assert balr(torch.zeros(3), torch.tensor([1.0, 2.0, 5.0])).item() == pytest.approx(math.log(3))
    # Temperature divides both score vectors.
    assert balr(y_hat, y.detach(), 2.0).item() == pytest.approx(balr(y_hat / 2, y.detach() / 2).item())


def test_balr_is_exactly_zero_for_one_item():
    y_hat = torch.tensor([3.0], requires_grad=True)
    loss = balr(y_hat, torch.tensor([4.0]))
    assert loss.item() == 0.0
    loss.backward()
    assert y_hat.grad.tolist() == [0.0]


def test_sama_by_hand_with_and_without_mapping():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0], [4.0, 3.0]], requires_grad=True)
    ta = torch.tensor([5.0, 3.0, 1.0])  # tau = (TA - 1) / 4 = 1, 0.5, 0
    # cosines 1, 0, (12 + 12) / 25 = 0.96
    plain = sama(a, t, ta)
    assert plain.item() == pytest.approx(((1 - 1) ** 2 + (0 - 0.5) ** 2 + (0.96 - 0) ** 2) / 3)
    # mapped: (s + 1) / 2 = 1, 0.5, 0.98
    mapped = sama(a, t, ta, map_cos_to_unit=True)
    assert mapped.item() == pytest.approx(((1 - 1) ** 2 + (0.5 - 0.5) ** 2 + (0.98 - 0) ** 2) / 3)
    plain.backward()
    assert a.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def test_l1_by_hand():
    assert l1(torch.tensor([1.0, 4.0, 2.5]), torch.tensor([2.0, 2.0, 2.5])).item() == pytest.approx((1 + 2 + 0) / 3)


def test_pamr_by_hand_excludes_ties_with_weights_and_margins():
    y = torch.tensor([1.0, 2.0, 3.0, 3.0], requires_grad=True)
    y_hat = torch.tensor([2.0, 1.0, 3.5, 0.0], requires_grad=True)
    # y~ = [0, 0.5, 1, 1]; gamma = 7: w = 1 + 6 max(y~_i, y~_j); m = 0.2 |y_i - y_j|. Both orders of a pair
    # give the same hinge. Untied pairs (5 unordered, 10 ordered; the tied pair (2, 3) is left out):
    # (0,1): w 4, m 0.2, relu((2 - 1) + 0.2)   = 1.2 -> 4.8
    # (0,2): w 7, m 0.4, relu((2 - 3.5) + 0.4) = 0
    # (0,3): w 7, m 0.4, relu((2 - 0) + 0.4)   = 2.4 -> 16.8
    # (1,2): w 7, m 0.2, relu((1 - 3.5) + 0.2) = 0
    # (1,3): w 7, m 0.2, relu((1 - 0) + 0.2)   = 1.2 -> 8.4
    loss = pamr(y_hat, y)
    assert loss.item() == pytest.approx(2 * (4.8 + 16.8 + 8.4) / 10)  # 6.0; counting the tie would give 5.0
    loss.backward()
    # d/dy_hat_0 = 2 (4 + 7) / 10; _1 = 2 (-4 + 7) / 10; _2 = 0; _3 = 2 (-7 - 7) / 10.
    assert y_hat.grad.tolist() == pytest.approx([2.2, 0.6, 0.0, -2.8])
    assert y.grad is None
    assert pamr(y_hat, y, gamma=1.0).item() == pytest.approx(2 * (1.2 + 2.4 + 1.2) / 10)
    assert pamr(y_hat, y, margin_scale=0.0).item() == pytest.approx(2 * (4 * 1.0 + 7 * 2.0 + 7 * 1.0) / 10)


def test_pamr_is_zero_without_untied_pairs():
    assert pamr(torch.tensor([1.0, 4.0, 2.0]), torch.full((3,), 2.0)).item() == 0.0
    assert pamr(torch.tensor([1.0]), torch.tensor([3.0])).item() == 0.0


def _distribution_outputs():
    torch.manual_seed(0)
    logits = torch.randn(4, 20, requires_grad=True)
    centers = torch.linspace(1, 5, 20)
    mi_probs, ta_probs = torch.softmax(logits, -1), torch.softmax(logits.flip(0) * 2, -1)
    out = {"mi_probs": mi_probs, "ta_probs": ta_probs, "mi": mi_probs @ centers, "ta": ta_probs @ centers,
           "audio_vec": torch.randn(4, 8), "text_vec": torch.randn(4, 8)}
    return out, logits, centers, torch.tensor([1.0, 2.2, 3.4, 4.8]), torch.tensor([2.0, 2.0, 4.0, 5.0])


@pytest.mark.parametrize("lam_r,lam_a", [(0.01, 0.2), (0.2, 0.3)])  # released script; paper digest
def test_total_loss_distribution_combines_parts_with_published_lambdas(lam_r, lam_a):
    out, logits, centers, y_mi, y_ta = _distribution_outputs()
    cfg = LossConfig(lambda_balr=lam_r, lambda_sama=lam_a)
    loss, parts = total_loss(out, y_mi, y_ta, cfg, centers)
    ce_mi, ce_ta = ce_gauss(out["mi_probs"], y_mi, 0.25, centers), ce_gauss(out["ta_probs"], y_ta, 0.25, centers)
    r, a = balr(out["mi"], y_mi), sama(out["audio_vec"], out["text_vec"], y_ta)
    assert r.item() > 0.1 and a.item() > 0.1  # so that the lambdas matter
    assert loss.item() == pytest.approx((ce_mi + ce_ta + lam_r * r + lam_a * a).item(), rel=1e-6)
    assert parts["balr"] == pytest.approx(lam_r * r.item()) and parts["sama"] == pytest.approx(lam_a * a.item())
    assert parts["ce_mi"] == pytest.approx(ce_mi.item()) and parts["ce_ta"] == pytest.approx(ce_ta.item())
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_total_loss_distribution_options_and_errors():
    out, _, centers, y_mi, y_ta = _distribution_outputs()
    no_align = {k: v for k, v in out.items() if k not in ("audio_vec", "text_vec")}
    _, parts = total_loss(no_align, y_mi, y_ta, LossConfig(lambda_balr=0, lambda_sama=0), centers)
    assert set(parts) == {"ce_mi", "ce_ta", "total"}
    with pytest.raises(DeramosError, match="return_alignment"):
        total_loss(no_align, y_mi, y_ta, LossConfig(lambda_sama=0.2), centers)
    mapped = LossConfig(lambda_balr=0, lambda_sama=1.0, sama_map_cos_to_unit=True)
    _, parts = total_loss(out, y_mi, y_ta, mapped, centers)
    assert parts["sama"] == pytest.approx(sama(out["audio_vec"], out["text_vec"], y_ta, True).item())
    _, parts = total_loss(out, y_mi, y_ta, LossConfig(lambda_balr=1.0, lambda_sama=0, temperature=0.5), centers)
    assert parts["balr"] == pytest.approx(balr(out["mi"], y_mi, 0.5).item())
    with pytest.raises(DeramosError, match="distribution heads"):
        total_loss({"mi": out["mi"], "ta": out["ta"]}, y_mi, y_ta, LossConfig(), centers)


def test_total_loss_l1_and_pamr_on_scalar_heads():
    y_mi, y_ta = torch.tensor([1.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 5.0])
    mi = torch.tensor([2.0, 2.5, 4.5], requires_grad=True)
    out = {"mi": mi, "ta": torch.tensor([2.0, 3.0, 3.0])}
    loss, parts = total_loss(out, y_mi, y_ta, LossConfig(kind="l1"), C3)
    # L1: MI (1 + 0.5 + 0.5) / 3, TA (0 + 1 + 2) / 3
    assert loss.item() == pytest.approx(2 / 3 + 1) and set(parts) == {"l1_mi", "l1_ta", "total"}
    loss, parts = total_loss(out, y_mi, y_ta, LossConfig(kind="pamr"), C3)
    expected = 2 / 3 + 1 + pamr(out["mi"], y_mi).item() + pamr(out["ta"], y_ta).item()
    assert loss.item() == pytest.approx(expected) and parts["pamr_ta"] > 0
    loss.backward()
    assert mi.grad.abs().sum() > 0


def test_pairwise_ranking_by_hand():
    from training.losses import pairwise_ranking

    pred, target = torch.tensor([3.0, 2.0, 4.0]), torch.tensor([4.0, 2.0, 2.0])
    # Untied ordered pairs: (0,1) and (1,0) are in order (0); (0,2) and (2,0) are swapped by 1 each;
    # (1,2), (2,1) are tied and excluded. Mean = (0 + 0 + 1 + 1) / 4.
    assert pairwise_ranking(pred, target).item() == pytest.approx(0.5)
    i, j = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    ref = torch.nn.functional.margin_ranking_loss(pred[i], pred[j], torch.sign(target[i] - target[j]), margin=0.0)
    assert pairwise_ranking(pred, target).item() == pytest.approx(ref.item())
    assert pairwise_ranking(pred, torch.full((3,), 3.0)).item() == 0.0
    assert pairwise_ranking(torch.tensor([2.0]), torch.tensor([3.0])).item() == 0.0


def test_pairwise_kind_replaces_balr_in_the_total():
    from training.config import LossConfig
    from training.losses import pairwise_ranking, total_loss

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 20), -1)
    centers = torch.linspace(1, 5, 20)
    out = {"mi": probs @ centers, "ta": probs @ centers, "mi_probs": probs, "ta_probs": probs}
    y = torch.tensor([1.0, 2.0, 4.0, 5.0])
    loss, parts = total_loss(out, y, y, LossConfig(kind="pairwise", lambda_balr=0.5, lambda_sama=0), centers)
    assert set(parts) == {"ce_mi", "ce_ta", "pairwise", "total"}
    assert parts["pairwise"] == pytest.approx(0.5 * pairwise_ranking(out["mi"], y).item())
    assert loss.item() == pytest.approx(parts["ce_mi"] + parts["ce_ta"] + parts["pairwise"], rel=1e-6)
