"""GRPO on sampled tokens: group-normalised advantages and the PPO-clipped, token-mean loss.

Pure functions on tensors. One implementation serves every backend: the model gives log-probs
of the tokens it sampled (autoregressive Janus or masked Show-o alike), this module turns them
and the rewards into a loss.

    advantages = group_advantages(rewards, group_size)              # [N]
    loss, stats = grpo_loss(logprobs, old_logprobs, advantages,     # logprobs [N,T], with grad
                            ref_logprobs=ref, beta=0.04)
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4
                     ) -> torch.Tensor:
    """rewards [N] (N = groups x group_size, group-major) → reward minus its group's mean,
    divided by the group's std when `scale_std` (DeepSeekMath); a group whose rewards are all
    equal gets advantage 0 everywhere, so it teaches nothing."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards: expected [groups*{group_size}], got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_std:
        centred = centred / (grouped.std(1, keepdim=True, unbiased=False) + eps)
    return centred.flatten()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate on tokens sampled from π (Schulman's k3): exp(r) − r − 1,
    r = log π_ref − log π; unbiased, never negative."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate, averaged over every (unmasked) token of the batch ("token-mean").

    logprobs [N,T] of the sampled tokens under the policy being trained (with grad);
    old_logprobs [N,T] under the policy that sampled them (no grad); advantages [N];
    ref_logprobs [N,T] under the reference, for the KL penalty β·k3 (skipped when β = 0).
    The ratio is clipped to [1 − eps_low, 1 + eps_high] (DAPO's asymmetric clip when they differ)."""
    if logprobs.shape != old_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and old_logprobs {tuple(old_logprobs.shape)} differ")
    mask = torch.ones_like(logprobs) if mask is None else mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    adv = advantages.detach().to(logprobs.dtype)[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    tokens = mask.sum().clamp(min=1)
    stats = {}
    kl = None
    if ref_logprobs is not None and beta > 0:
        kl = k3_kl(logprobs, ref_logprobs.detach())
        per_token = per_token + beta * kl
    loss = (per_token * mask).sum() / tokens
    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats["clip_ratio/low_mean"] = ((low.float() * mask).sum() / tokens).item()
        stats["clip_ratio/high_mean"] = ((high.float() * mask).sum() / tokens).item()
        stats["clip_ratio/region_mean"] = (((low | high).float() * mask).sum() / tokens).item()
        if kl is not None:
            stats["kl"] = ((kl * mask).sum() / tokens).item()
    return loss, stats
