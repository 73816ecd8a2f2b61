"""The tensor formulas of peer collaborative learning (Wu and Gong, AAAI 2021), free of any model.

Shapes: R RoIs, C = K + 1 classes (background last), m peers.

* :func:`kd_loss`: Hinton's knowledge distillation at temperature T, ``T^2 mean_r KL(softmax(z_t/T) ||
  softmax(z_s/T))``; the teacher's logits are a target (no gradient);
* :func:`peer_ensemble_kd`: the peer ensemble teacher distilled into every peer, summed over peers;
* :func:`peer_mean_kd`: each peer distilled from the *other* peers' mean-teacher (EMA) logits, averaged
  over those m - 1 teachers, summed over peers;
* :func:`rampup_weight`: ``w(p) = exp(-5 (1 - p)^2)`` at training progress p in [0, 1];
* :func:`ema_alpha`, :func:`ema_update_`: the mean teacher's decay ``min(1 - 1/(s + 1), decay)`` at
  update s (0-based) and the in-place update ``mean <- alpha mean + (1 - alpha) live``.
"""
import math
from typing import Iterable, Sequence

import torch

from ..distill.bkd import balanced_kl

__all__ = ["ema_alpha", "ema_update_", "kd_loss", "peer_ensemble_kd", "peer_mean_kd", "rampup_weight"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 mean_r KL(softmax(z_t/T) || softmax(z_s/T))`` over the R rows of (R, C) logits (the
    reference's ``KLDivLoss(reduction="batchmean")`` times T^2); the teacher is detached; 0 (in the
    graph) when R == 0. It is BKD's KL with every class weight 1."""
    weights = student_logits.new_ones(student_logits.shape[1])
    return balanced_kl(student_logits, teacher_logits.detach(), weights, temperature)


def peer_ensemble_kd(peer_logits: Sequence[torch.Tensor], ensemble_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``sum_k kd_loss(z_k, z_e)``: the peer ensemble teacher's (R, C) logits ``z_e`` distilled into
    each of the m peers' (R, C) logits ``z_k``."""
    return torch.stack([kd_loss(z, ensemble_logits, temperature) for z in peer_logits]).sum()


def peer_mean_kd(peer_logits: Sequence[torch.Tensor], mean_logits: Sequence[torch.Tensor],
                 temperature: float) -> torch.Tensor:
    """``sum_k 1/(m-1) sum_{l != k} kd_loss(z_k, z'_l)``: every peer learns from the temporal means
    ``z'_l`` (R, C) of the other peers (m >= 2)."""
    m = len(peer_logits)
    if m < 2 or len(mean_logits) != m:
        raise ValueError(f"Peer mean distillation needs m >= 2 peers and one mean per peer (got {m}, {len(mean_logits)})")
    per_peer = [
        torch.stack([kd_loss(z, mean_logits[l], temperature) for l in range(m) if l != k]).mean()
        for k, z in enumerate(peer_logits)
    ]
    return torch.stack(per_peer).sum()


def rampup_weight(progress: float) -> float:
    """``exp(-5 (1 - p)^2)`` with p = ``progress`` clipped to [0, 1] (1 from the end of the ramp on)."""
    p = min(max(float(progress), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - p) ** 2)


def ema_alpha(step: int, decay: float) -> float:
    """The mean teacher's decay at update ``step`` (0-based): ``min(1 - 1/(step + 1), decay)``, the
    true average of the updates so far until the exponential average is the closer one."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update_(mean: Iterable[torch.Tensor], live: Iterable[torch.Tensor], alpha: float) -> None:
    """``mean <- alpha * mean + (1 - alpha) * live`` in place, tensor by tensor."""
    for m, x in zip(mean, live, strict=True):
        m.mul_(alpha).add_(x.detach(), alpha=1.0 - alpha)
