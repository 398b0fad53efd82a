"""Shuffling pieces for ordering tasks (image tiles, video clips), one permutation per sample."""

from __future__ import annotations

import torch


def shuffle_pieces(pieces: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle each sample's pieces ([B, k, ...]) with its own random permutation; returns the
    shuffled pieces, shown as labels 1…k in that order, and the answer [B, k] (1-based): the
    label that belongs at each original position, i.e. the inverse of the shuffle. Never the
    identity (k ≥ 2): an unshuffled puzzle would reward copying "1, 2, 3 …"."""
    b, k = pieces.shape[:2]
    keys = torch.rand(b, k, generator=generator, device=generator.device if generator else "cpu").to(pieces.device)
    shown = keys.argsort(dim=1)  # shown[b, j] = original position of the piece labelled j+1
    identity = (shown == torch.arange(k, device=pieces.device)).all(dim=1)
    shown[identity] = shown[identity].roll(1, dims=1)  # a cyclic shift is never the identity
    batch = torch.arange(b, device=pieces.device)[:, None]
    return pieces[batch, shown], shown.argsort(dim=1) + 1
