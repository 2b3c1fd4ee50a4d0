"""Each loss against values worked out by hand."""

import math

import pytest
import torch

from training.config import LossConfig
from training.losses import balr, ce_gauss, gaussian_targets, l1, pamr, sama, total_loss

C3 = torch.tensor([1.0, 3.0, 5.0])


def test_gaussian_targets_by_hand():
    q = gaussian_targets(torch.tensor([3.0, 9.0]), C3, sigma=1.0)
    # y = 3: weights exp(-2), 1, exp(-2); y = 9 is clamped to 5: exp(-8), exp(-2), 1.
    a = torch.tensor([math.exp(-2), 1, math.exp(-2)])
    b = torch.tensor([math.exp(-8), math.exp(-2), 1])
    assert torch.allclose(q[0], a / a.sum()) and torch.allclose(q[1], b / b.sum())


def test_ce_gauss_is_kl_and_has_cross_entropy_gradient():
    p = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    y = torch.tensor([3.0])
    q = gaussian_targets(y, C3, sigma=1.0)[0]
    expected = sum(float(q[k]) * (math.log(float(q[k])) - math.log([0.2, 0.5, 0.3][k] + 1e-10)) for k in range(3))
    loss = ce_gauss(p, y, sigma=1.0, bin_centers=C3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    ce = -(q * torch.log(p.detach().requires_grad_() + 1e-10)).sum()
    p2 = p.detach().clone().requires_grad_()
    (-(q * torch.log(p2 + 1e-10)).sum()).backward()
    assert torch.allclose(p.grad, p2.grad)
    assert ce_gauss(q.unsqueeze(0), y, 1.0, C3).item() == pytest.approx(0.0, abs=1e-6)


def test_balr_by_hand_sum_not_mean_and_target_detached():
    y = torch.tensor([1.0, 2.0], requires_grad=True)
    y_hat = torch.tensor([2.0, 2.0], requires_grad=True)
    P = [1 / (1 + math.e), math.e / (1 + math.e)]
    # Q = [0.5, 0.5]: L = -(P1 + P2) log 0.5 = log 2.
    loss = balr(y_hat, y, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    assert y.grad is None and y_hat.grad is not None
    assert torch.allclose(y_hat.grad, torch.tensor([0.5 - P[0], 0.5 - P[1]]), atol=1e-6)
    assert balr(torch.tensor([3.0]), torch.tensor([4.0])).item() == 0.0
    three = balr(torch.zeros(3), torch.zeros(3))
    assert three.item() == pytest.approx(math.log(3))  # a sum over items: grows with the list


def test_sama_by_hand_with_and_without_mapping():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    ta = torch.tensor([5.0, 3.0])  # targets 1 and 0.5
    assert sama(a, t, ta).item() == pytest.approx((0 + 0.25) / 2)
    assert sama(a, t, ta, map_cos_to_unit=True).item() == pytest.approx((0 + 0) / 2)


def test_l1_and_pamr_by_hand():
    assert l1(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 2.0])).item() == pytest.approx(1.5)
    y = torch.tensor([1.0, 3.0, 3.0])
    y_hat = torch.tensor([2.0, 1.5, 4.0])
    # ỹ = [0, 1, 1]; untied ordered pairs: (0,1), (0,2), (1,0), (2,0); all have w = 1 + 6 * 1 = 7, m = 0.4.
    # (0,1): sign(-2)=-1 -> relu(+(2-1.5) + 0.4) = 0.9; (1,0): relu(-(1.5-2) + 0.4) = 0.9
    # (0,2): relu((2-4) + 0.4) = 0;                    (2,0): relu(-(4-2) + 0.4) = 0
    assert pamr(y_hat, y).item() == pytest.approx(7 * (0.9 + 0.9) / 4)
    assert pamr(y_hat, torch.full((3,), 2.0)).item() == 0.0


@pytest.mark.parametrize("lam_r,lam_a", [(0.01, 0.2), (0.2, 0.3)])
def test_total_loss_combines_parts_with_published_weights(lam_r, lam_a):
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 20), -1)
    centers = torch.linspace(1, 5, 20)
    out = {"mi_probs": probs, "ta_probs": probs.flip(0), "mi": probs @ centers, "ta": probs.flip(0) @ centers,
           "audio_vec": torch.randn(4, 8), "text_vec": torch.randn(4, 8)}
    y_mi, y_ta = torch.tensor([1.0, 2.2, 3.4, 4.8]), torch.tensor([2.0, 2.0, 4.0, 5.0])
    loss, parts = total_loss(out, y_mi, y_ta, LossConfig(lambda_balr=lam_r, lambda_sama=lam_a), centers)
    expected = (ce_gauss(probs, y_mi, 0.25, centers) + ce_gauss(probs.flip(0), y_ta, 0.25, centers)
                + lam_r * balr(out["mi"], y_mi) + lam_a * sama(out["audio_vec"], out["text_vec"], y_ta))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"ce_mi", "ce_ta", "balr", "sama", "total"}
    only_ce, parts = total_loss(out, y_mi, y_ta, LossConfig(lambda_balr=0, lambda_sama=0), centers)
    assert set(parts) == {"ce_mi", "ce_ta", "total"}
