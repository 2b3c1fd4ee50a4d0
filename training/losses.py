"""DeRA-MOS losses and the baselines it is compared with (deramos-spec.md, "Losses").

Notation: a mini-batch of B clips, MOS y in [1, 5], K bins with centres c_k, predicted distribution p,
expected score y_hat = sum_k p_k c_k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deramos_rt.errors import DeramosError
from training.config import LossConfig

EPS = 1e-10  # the research code's log(p + 1e-10): keeps log finite when a bin's probability underflows


def gaussian_targets(target_mos: torch.Tensor, bin_centers: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
    """Soft labels q_k(y) = exp(-(y - c_k)^2 / (2 sigma^2)) / sum_j exp(-(y - c_j)^2 / (2 sigma^2)).

    y is first clamped to [c_1, c_K]. Returns (B, K).
    """
    y = target_mos.clamp(float(bin_centers[0]), float(bin_centers[-1])).unsqueeze(-1)
    logits = -((y - bin_centers) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=-1)


def ce_gauss(probs: torch.Tensor, target_mos: torch.Tensor, sigma: float = 0.25,
             bin_centers: torch.Tensor | None = None) -> torch.Tensor:
    """L_CE-Gauss = mean_b KL(q_b || p_b) = mean_b sum_k q_bk (log q_bk - log(p_bk + eps)).

    Same gradient as the cross-entropy -sum_k q_k log p_k (they differ by the constant entropy of q).
    """
    if bin_centers is None:
        bin_centers = torch.linspace(1.0, 5.0, probs.shape[-1], device=probs.device)
    q = gaussian_targets(target_mos, bin_centers.to(probs.dtype), sigma)
    kl = q * (torch.log(q.clamp_min(EPS)) - torch.log(probs + EPS))
    return kl.sum(-1).mean()


def balr(pred_mos: torch.Tensor, target_mos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L_BALR: ListNet top-1 over the whole mini-batch as one list.

    P = softmax(y / T), Q = softmax(y_hat / T) over the B items; L = -sum_i P_i log Q_i
    (a sum, not a mean; the target P carries no gradient; 0 when B <= 1).
    """
    if pred_mos.numel() <= 1:
        return pred_mos.sum() * 0.0
    p = torch.softmax(target_mos.detach() / temperature, dim=0)
    log_q = torch.log_softmax(pred_mos / temperature, dim=0)
    return -(p * log_q).sum()


def sama(audio_vec: torch.Tensor, text_vec: torch.Tensor, target_ta: torch.Tensor,
         map_cos_to_unit: bool = False) -> torch.Tensor:
    """L_SAMA: s_b = cos(a_b, t_b) (optionally (s_b + 1) / 2), tau_b = (TA_b - 1) / 4; L = mean_b (s_b - tau_b)^2.

    No negatives: each clip's similarity is pulled toward its own rescaled TA score.
    """
    s = F.cosine_similarity(audio_vec, text_vec, dim=-1)
    if map_cos_to_unit:
        s = (s + 1) / 2
    tau = (target_ta - 1) / 4
    return ((s - tau) ** 2).mean()


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, mean_b |y_hat_b - y_b| (the AudioMOS 2025 baseline)."""
    return (pred - target).abs().mean()


def pamr(pred: torch.Tensor, target: torch.Tensor, gamma: float = 7.0, margin_scale: float = 0.2) -> torch.Tensor:
    """QAMRO's pairwise PAMR loss over all ordered pairs (i, j) with y_i != y_j.

    y~ = (y - min y) / (max y - min y); w_ij = 1 + (gamma - 1) max(y~_i, y~_j); m_ij = margin_scale |y_i - y_j|;
    L = mean_{pairs} w_ij relu(-sign(y_i - y_j)(y_hat_i - y_hat_j) + m_ij). 0 when no pair differs.
    """
    y = target.detach()
    span = (y.max() - y.min()).clamp_min(1e-12)
    y_norm = (y - y.min()) / span
    diff_true = y.unsqueeze(1) - y.unsqueeze(0)
    pairs = diff_true != 0
    if not pairs.any():
        return pred.sum() * 0.0
    weight = 1 + (gamma - 1) * torch.maximum(y_norm.unsqueeze(1), y_norm.unsqueeze(0))
    margin = margin_scale * diff_true.abs()
    diff_pred = pred.unsqueeze(1) - pred.unsqueeze(0)
    hinge = F.relu(-torch.sign(diff_true) * diff_pred + margin)
    return (weight * hinge)[pairs].mean()


def total_loss(outputs: dict[str, torch.Tensor], target_mi: torch.Tensor, target_ta: torch.Tensor,
               cfg: LossConfig, bin_centers: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective for ``cfg.kind``; returns (loss, its parts as floats for logging).

    * ``distribution``: CE-Gauss(MI) + CE-Gauss(TA) + lambda_r BALR(MI) + lambda_a SAMA(TA).
    * ``l1``: L1(MI) + L1(TA) on scalar heads.
    * ``pamr``: L1 + PAMR on each of MI and TA (QAMRO pairs its ranking loss with a regression loss so
      the scores stay on the MOS scale).
    """
    cfg.validate()
    parts: dict[str, torch.Tensor] = {}
    if cfg.kind == "distribution":
        if "mi_probs" not in outputs:
            raise DeramosError("loss 'distribution' needs distribution heads (model.head = 'distribution')")
        parts["ce_mi"] = ce_gauss(outputs["mi_probs"], target_mi, cfg.sigma, bin_centers)
        parts["ce_ta"] = ce_gauss(outputs["ta_probs"], target_ta, cfg.sigma, bin_centers)
        if cfg.lambda_balr:
            parts["balr"] = cfg.lambda_balr * balr(outputs["mi"], target_mi, cfg.temperature)
        if cfg.lambda_sama:
            if "audio_vec" not in outputs:
                raise DeramosError("lambda_sama > 0 needs the heads' alignment vectors (return_alignment=True)")
            parts["sama"] = cfg.lambda_sama * sama(outputs["audio_vec"], outputs["text_vec"], target_ta,
                                                   cfg.sama_map_cos_to_unit)
    else:
        parts["l1_mi"] = l1(outputs["mi"], target_mi)
        parts["l1_ta"] = l1(outputs["ta"], target_ta)
        if cfg.kind == "pamr":
            parts["pamr_mi"] = pamr(outputs["mi"], target_mi, cfg.pamr_gamma, cfg.pamr_margin)
            parts["pamr_ta"] = pamr(outputs["ta"], target_ta, cfg.pamr_gamma, cfg.pamr_margin)
    loss = torch.stack(list(parts.values())).sum()
    logged = {k: float(v.detach()) for k, v in parts.items()}
    logged["total"] = float(loss.detach())
    return loss, logged
