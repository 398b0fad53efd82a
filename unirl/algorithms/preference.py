"""Preference losses on image-token log-probs, as pure functions of per-pair log-probs.

OSPO (object-centric self-improving preference optimisation) mixes three terms on
length-normalised log-probs (the mean over a sequence's image tokens, no CFG):

    SimPO = −log σ(β1 · (Δ − γ1)),   Δ = avg log π(y_w|x) − avg log π(y_l|x)
    CoPO  = −log σ(β2 · (avg log π(y_w|x) − avg log π(y_w|x⁻) − γ2))
    SFT   = −avg log π(y_w|x)
    L     = a·SimPO + b·CoPO + c·SFT

y_w the chosen image, y_l the rejected one, x the prompt, x⁻ the hard-negative prompt. DPO is the
usual reference-anchored loss on summed log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ospo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_given_negative: torch.Tensor,
              simpo_weight: float = 0.8, copo_weight: float = 0.5, sft_weight: float = 1.5,
              beta1: float = 3.0, beta2: float = 5.0, gamma1: float = 0.5, gamma2: float = 0.5
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """All inputs [B]: avg log π(y_w|x), avg log π(y_l|x), avg log π(y_w|x⁻). Returns the mean
    loss and its parts, with TRL's names for the preference rewards (β1 · avg log-prob)."""
    simpo = -F.logsigmoid(beta1 * (chosen - rejected - gamma1))
    copo = -F.logsigmoid(beta2 * (chosen - chosen_given_negative - gamma2))
    sft = -chosen
    loss = (simpo_weight * simpo + copo_weight * copo + sft_weight * sft).mean()
    reward_chosen, reward_rejected = beta1 * chosen.detach(), beta1 * rejected.detach()
    stats = {"loss/simpo": simpo.mean().item(), "loss/copo": copo.mean().item(), "loss/sft": sft.mean().item(),
             "rewards/chosen": reward_chosen.mean().item(), "rewards/rejected": reward_rejected.mean().item(),
             "rewards/accuracies": (reward_chosen > reward_rejected).float().mean().item(),
             "rewards/margins": (reward_chosen - reward_rejected).mean().item(),
             "logps/chosen": chosen.detach().mean().item(), "logps/rejected": rejected.detach().mean().item(),
             "logps/chosen_given_negative": chosen_given_negative.detach().mean().item()}
    return loss, stats


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al.): inputs [B] are summed log-probs of the policy and the reference."""
    reward_chosen = beta * (chosen - ref_chosen)
    reward_rejected = beta * (rejected - ref_rejected)
    loss = -F.logsigmoid(reward_chosen - reward_rejected).mean()
    stats = {"rewards/chosen": reward_chosen.detach().mean().item(),
             "rewards/rejected": reward_rejected.detach().mean().item(),
             "rewards/accuracies": (reward_chosen > reward_rejected).float().mean().item(),
             "rewards/margins": (reward_chosen - reward_rejected).detach().mean().item(),
             "logps/chosen": chosen.detach().mean().item(), "logps/rejected": rejected.detach().mean().item()}
    return loss, stats


def select_pair(base_margins: torch.Tensor, negative_margins: torch.Tensor, base_logps: torch.Tensor,
                negative_logps: torch.Tensor, threshold: float = 0.5) -> tuple[int | None, int | None]:
    """OSPO's stage-3 choice for one prompt, from self-VQA margins (p_yes − p_no) of the base
    prompt's questions: base_margins [G, Q] for the base prompt's images, negative_margins [M, Q]
    for the negative prompts' images; *_logps their length-normalised log-probs given the base
    prompt ([G], [M]).

    Chosen: a base image with every question answered yes by more than `threshold`, the one with
    the highest mean margin. Rejected: a negative image with at least one question answered no by
    more than `threshold`, the one whose log-prob is closest to the chosen's (the hardest).
    Returns (chosen index, rejected index), None where there is none (then the prompt is dropped)."""
    passing = (base_margins > threshold).all(dim=1)
    if not passing.any():
        return None, None
    mean = base_margins.mean(dim=1).masked_fill(~passing, float("-inf"))
    chosen = int(mean.argmax())
    failing = (negative_margins < -threshold).any(dim=1)
    if not failing.any():
        return chosen, None
    distance = (negative_logps - base_logps[chosen]).abs().masked_fill(~failing, float("inf"))
    return chosen, int(distance.argmin())
