"""DeRA-MOS training losses (CE-Gauss, BALR, SAMA) and the baselines and ablations it is compared with
(L1, QAMRO's PAMR, the authors' pairwise ranking loss).

Notation: a mini-batch of B clips with MOS y in [1, 5]; a distribution head gives p (B, K) over K bins with
centres c_k and the expected score y_hat = sum_k p_k c_k. Every loss returns a 0-dim tensor; ``total_loss``
combines them according to ``LossConfig.kind`` and also returns the parts as floats for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deramos_rt.errors import DeramosError
from training.config import LossConfig

# The research code takes log(p + 1e-10): a bin whose probability underflows to 0 then costs a large but
# finite amount instead of inf/NaN, and the gradient stays finite. We use the same constant.
EPS = 1e-10


def gaussian_targets(target_mos: torch.Tensor, bin_centers: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
    """Gaussian soft labels over the bins.

    q_k(y) = exp(-(y - c_k)^2 / (2 sigma^2)) / sum_j exp(-(y - c_j)^2 / (2 sigma^2)), with y first clamped
    to [c_1, c_K] so that out-of-range labels put their mass on the end bin.

    Args:
        target_mos: (B,) MOS labels.
        bin_centers: (K,) increasing bin centres.
        sigma: width of the Gaussian, in MOS units (> 0).

    Returns:
        (B, K) rows summing to 1, in ``bin_centers``' dtype and device.
    """
    if sigma <= 0:
        raise DeramosError(f"CE-Gauss sigma must be > 0, got {sigma}; set loss.sigma (paper: 0.25)")
    centers = bin_centers
    y = target_mos.to(centers).clamp(float(centers[0]), float(centers[-1])).unsqueeze(-1)
    # softmax of the exponents = the normalised exp, without overflow/underflow of the raw exp.
    return torch.softmax(-((y - centers) ** 2) / (2 * sigma**2), dim=-1)


def ce_gauss(probs: torch.Tensor, target_mos: torch.Tensor, sigma: float = 0.25,
             bin_centers: torch.Tensor | None = None) -> torch.Tensor:
    """L_CE-Gauss = mean_b KL(q_b || p_b) = mean_b sum_k q_bk (log q_bk - log(p_bk + 1e-10)).

    q is ``gaussian_targets``; q log q is taken as 0 where q_k = 0. The loss differs from the cross-entropy
    -sum_k q_k log(p_k + 1e-10) only by the entropy of q, a constant, so the gradients are identical; KL
    is reported because it is 0 at the optimum.

    Args:
        probs: (B, K) predicted bin probabilities (softmax output; zeros allowed).
        target_mos: (B,) MOS labels.
        sigma: soft-label width.
        bin_centers: (K,) bin centres; default ``linspace(1, 5, K)``.

    Returns:
        0-dim tensor.
    """
    if bin_centers is None:
        bin_centers = torch.linspace(1.0, 5.0, probs.shape[-1])
    if probs.shape[-1] != bin_centers.numel():
        raise DeramosError(f"CE-Gauss: probabilities have {probs.shape[-1]} bins but there are "
                           f"{bin_centers.numel()} bin centres; use the model's heads.bin_centers")
    q = gaussian_targets(target_mos, bin_centers.to(probs), sigma)
    kl = torch.xlogy(q, q) - q * torch.log(probs + EPS)
    return kl.sum(-1).mean()


def balr(pred_mos: torch.Tensor, target_mos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L_BALR: ListNet top-1 loss with the whole mini-batch as one list.

    P = softmax(y / T), Q = softmax(y_hat / T) over the B items; L = -sum_i P_i log Q_i. A sum over the
    list, not a mean (as in the research code). The target P is detached. With B <= 1 there is no ranking
    and the loss is exactly 0.

    Args:
        pred_mos: (B,) predicted expected scores y_hat.
        target_mos: (B,) MOS labels y.
        temperature: T.

    Returns:
        0-dim tensor.
    """
    if pred_mos.numel() <= 1:
        return pred_mos.sum() * 0.0  # keeps the graph (zero gradient) so callers can always backward
    p = torch.softmax(target_mos.detach().to(pred_mos) / temperature, dim=0)
    log_q = torch.log_softmax(pred_mos / temperature, dim=0)
    return -(p * log_q).sum()


def sama(audio_vec: torch.Tensor, text_vec: torch.Tensor, target_ta: torch.Tensor,
         map_cos_to_unit: bool = False) -> torch.Tensor:
    """L_SAMA: each clip's audio/text cosine is pulled toward its own rescaled TA score (no negatives).

    s_b = cos(a_b, t_b), or (s_b + 1) / 2 with ``map_cos_to_unit``; tau_b = (TA_b - 1) / 4;
    L = mean_b (s_b - tau_b)^2.

    Args:
        audio_vec, text_vec: (B, D) training-only pooled vectors (taken before cross-attention).
        target_ta: (B,) TA labels in [1, 5].
        map_cos_to_unit: map the cosine to [0, 1] first (the third-party digest); the code does not.

    Returns:
        0-dim tensor.
    """
    s = F.cosine_similarity(audio_vec, text_vec, dim=-1)
    if map_cos_to_unit:
        s = (s + 1) / 2
    tau = (target_ta.to(s) - 1) / 4
    return ((s - tau) ** 2).mean()


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error L = mean_b |y_hat_b - y_b| (the AudioMOS 2025 baseline's regression loss)."""
    return (pred - target.to(pred)).abs().mean()


def pamr(pred: torch.Tensor, target: torch.Tensor, gamma: float = 7.0, margin_scale: float = 0.2) -> torch.Tensor:
    """QAMRO's preference-aware margin ranking loss over all ordered pairs (i, j) with y_i != y_j.

    y~ = (y - min y) / (max y - min y) over the batch; w_ij = 1 + (gamma - 1) max(y~_i, y~_j) (pairs that
    involve good clips count more); m_ij = margin_scale |y_i - y_j|;
    L = mean_{(i,j): y_i != y_j} w_ij relu(-sign(y_i - y_j)(y_hat_i - y_hat_j) + m_ij).
    Tied pairs are excluded; with no untied pair (all labels equal, or B <= 1) the loss is exactly 0.

    Args:
        pred: (B,) predicted scores.
        target: (B,) MOS labels (detached).
        gamma: weight of the best clip's pairs relative to the worst's.
        margin_scale: margin per MOS unit of label difference.

    Returns:
        0-dim tensor.
    """
    y = target.detach().to(pred)
    diff_true = y.unsqueeze(1) - y.unsqueeze(0)
    pairs = diff_true != 0
    if not bool(pairs.any()):
        return pred.sum() * 0.0
    y_norm = (y - y.min()) / (y.max() - y.min())  # max > min here: some pair differs
    weight = 1 + (gamma - 1) * torch.maximum(y_norm.unsqueeze(1), y_norm.unsqueeze(0))
    margin = margin_scale * diff_true.abs()
    diff_pred = pred.unsqueeze(1) - pred.unsqueeze(0)
    hinge = F.relu(-torch.sign(diff_true) * diff_pred + margin)
    return (weight * hinge)[pairs].mean()


def pairwise_ranking(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' pairwise ranking ablation: a margin ranking loss with margin 0 over the batch.

    Over every ordered pair (i, j), i != j, with y_i != y_j: l_ij = max(0, -sign(y_i - y_j)(y_hat_i - y_hat_j));
    L = mean of l_ij over those pairs (torch's ``MarginRankingLoss`` with mean reduction and target
    sign(y_i - y_j)). Tied pairs are excluded; with none left (all labels equal, or B <= 1) L is exactly 0.

    Args:
        pred: (B,) predicted expected scores y_hat (the MI head's, in the ablation).
        target: (B,) MOS labels (detached).

    Returns:
        0-dim tensor.
    """
    y = target.detach().to(pred)
    sign = torch.sign(y.unsqueeze(1) - y.unsqueeze(0))
    pairs = sign != 0
    if not bool(pairs.any()):
        return pred.sum() * 0.0
    diff_pred = pred.unsqueeze(1) - pred.unsqueeze(0)
    return F.relu(-sign * diff_pred)[pairs].mean()


def _distribution_parts(outputs, target_mi, target_ta, cfg: LossConfig, bin_centers) -> dict[str, torch.Tensor]:
    if "mi_probs" not in outputs or "ta_probs" not in outputs:
        raise DeramosError(f"loss kind {cfg.kind!r} needs distribution heads (model.head = 'distribution'); "
                           "use loss kind 'l1' or 'pamr' for scalar heads")
    parts = {"ce_mi": ce_gauss(outputs["mi_probs"], target_mi, cfg.sigma, bin_centers),
             "ce_ta": ce_gauss(outputs["ta_probs"], target_ta, cfg.sigma, bin_centers)}
    if cfg.lambda_balr and cfg.kind == "pairwise":
        parts["pairwise"] = cfg.lambda_balr * pairwise_ranking(outputs["mi"], target_mi)
    elif cfg.lambda_balr:
        parts["balr"] = cfg.lambda_balr * balr(outputs["mi"], target_mi, cfg.temperature)
    if cfg.lambda_sama:
        if "audio_vec" not in outputs or "text_vec" not in outputs:
            raise DeramosError("loss.lambda_sama > 0 needs the heads' audio_vec/text_vec: call the heads with "
                               "return_alignment=True, or set loss.lambda_sama = 0")
        parts["sama"] = cfg.lambda_sama * sama(outputs["audio_vec"], outputs["text_vec"], target_ta,
                                               cfg.sama_map_cos_to_unit)
    return parts


def total_loss(outputs: dict[str, torch.Tensor], target_mi: torch.Tensor, target_ta: torch.Tensor,
               cfg: LossConfig, bin_centers: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective selected by ``cfg.kind``.

    * ``distribution``: CE-Gauss(MI) + CE-Gauss(TA) + lambda_r BALR(y_hat_MI, y_MI) + lambda_a SAMA(TA);
      a term whose lambda is 0 is skipped (and SAMA then needs no alignment vectors).
    * ``pairwise``: the same with BALR replaced by ``lambda_balr * pairwise_ranking(y_hat_MI, y_MI)`` (the
      authors' ranking ablation).
    * ``l1``: L1(MI) + L1(TA) on the expected/scalar scores.
    * ``pamr``: L1(MI) + PAMR(MI) + L1(TA) + PAMR(TA). QAMRO adds its ranking loss to a regression loss
      (here L1, unweighted), since PAMR alone only fixes the order and leaves the MOS scale free.

    Args:
        outputs: the heads' dict (``mi``, ``ta``; ``mi_probs``/``ta_probs``; ``audio_vec``/``text_vec``).
        target_mi, target_ta: (B,) labels.
        cfg: loss settings.
        bin_centers: (K,) the heads' bin centres (``model.heads.bin_centers``).

    Returns:
        (loss, parts): parts maps ``ce_mi``, ``ce_ta``, ``balr``, ``pairwise``, ``sama``, ``l1_mi``, ``l1_ta``,
        ``pamr_mi``, ``pamr_ta`` (those present; the ranking and SAMA terms already multiplied by their
        lambda, so the parts add up to the total) and ``total`` to floats.
    """
    cfg.validate()
    if cfg.kind in ("distribution", "pairwise"):
        parts = _distribution_parts(outputs, target_mi, target_ta, cfg, bin_centers)
    else:
        parts = {"l1_mi": l1(outputs["mi"], target_mi), "l1_ta": l1(outputs["ta"], target_ta)}
        if cfg.kind == "pamr":
            parts["pamr_mi"] = pamr(outputs["mi"], target_mi, cfg.pamr_gamma, cfg.pamr_margin)
            parts["pamr_ta"] = pamr(outputs["ta"], target_ta, cfg.pamr_gamma, cfg.pamr_margin)
    loss = torch.stack(list(parts.values())).sum()
    logged = {name: float(value.detach()) for name, value in parts.items()}
    logged["total"] = float(loss.detach())
    return loss, logged
